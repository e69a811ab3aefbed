//! Why finger expansion (`base:B`) takes more hops than DKS' `(B-1)/B log_B N`: a model of
//! the routing alone, beside the simulator. Writes `results/lookup-schemes/finger-analysis.md`:
//!
//! ```text
//! cargo run --release -p chordkv-bench --bin finger_analysis -- \
//!     --out results/lookup-schemes/finger-analysis.md
//! ```
//!
//! The model is Chord's routing with nothing else: node `n` knows its successor and
//! `successor(n + o)` for every finger offset `o` of the scheme (the core's own
//! [`finger_offsets`], exact: an oracle, as the simulator's bootstrap); a lookup of key `k`
//! goes from node to node, each time to the known node closest before `k` (SIGCOMM'01 section
//! 4.3, `closest_preceding_node`), until it stands on `k`'s predecessor. The count is the
//! nodes it moved to, SIGCOMM'01's path length (section 6.3, Fig. 10), which the simulator
//! prints as "to the predecessor".
//!
//! Placements of the nodes:
//!
//! - **dense**: the ring of the DKS analysis (Alima, El-Ansary, Brand, Haridi, "DKS(N, k, f)",
//!   CCGrid 2003; El-Ansary et al., "Efficient Broadcast in Structured P2P Networks", IPTPS
//!   2003): an identifier space of exactly `N = B^L` points, every point a node. A lookup
//!   there takes one hop per non-zero base-B digit of the distance: `(B-1)/B L` on average.
//! - **even**: N nodes evenly spaced in the 2^160 ring;
//! - **random**: the simulator's ring, N nodes at the SHA-1 of their addresses (its very ids).
//!
//! Each row also runs `chordkv sim`'s engine on the same ring (`--successors 1`, fingers
//! alone, as SIGCOMM'01's protocol routes), unless `--model-only`.
//!
//! The model keeps the top 128 bits of each id: offsets below 2^32 all resolve to the
//! successor in rings of fewer than 2^100 nodes, so nothing a lookup does depends on them.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use chordkv_core::chord::routing::finger_offsets;
use chordkv_core::chord::Routing;
use chordkv_core::rng::Rng;
use chordkv_harness::sim::lookup::{LookupReport, LookupSim, LookupSimConfig, Workload};
use chordkv_harness::sim::sim_addr;
use chordkv_protocol::{Id, NodeRef};

/// Writes the finger analysis (model and simulator).
#[derive(Debug, Parser)]
struct Args {
    /// Output file (markdown); stdout when absent.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Lookups per ring and scheme.
    #[arg(long, default_value_t = 20_000)]
    lookups: u64,
    /// Seed of the lookups (entries and keys) and of the simulator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Ring sizes, as log2 N.
    #[arg(long, value_delimiter = ',', default_value = "8,12,16")]
    log2_n: Vec<u32>,
    /// Bases (2 is classic Chord).
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16,32,64")]
    bases: Vec<u32>,
    /// Skip the simulator (the model alone takes seconds; the simulator minutes at 2^16).
    #[arg(long)]
    model_only: bool,
}

/// A ring of node ids on a circle of `modulus` points (`None`: 2^128), with the finger
/// offsets every node uses.
struct Ring {
    ids: Vec<u128>,
    modulus: Option<u128>,
    offsets: Vec<u128>,
}

/// Path lengths of one set of lookups.
#[derive(Default)]
struct Paths {
    lookups: u64,
    to_predecessor: u64,
    /// Messages to the owner, Chord's walk.
    messages: u64,
    /// Messages to the owner when a finger interval holding the key names its owner.
    messages_inferred: u64,
    /// Nodes moved to before the predecessor, choosing each hop by [`Walk::Lookahead`].
    to_predecessor_lookahead: u64,
}

/// How a lookup in the model chooses its next node.
#[derive(Clone, Copy)]
enum Walk {
    /// Chord's and DKS' rule: the known node closest before the key (SIGCOMM'01 section 4.3,
    /// `closest_preceding_node`).
    Greedy,
    /// Greedy, but a node also names the owner when one of its finger starts lies in
    /// `(predecessor, key]`: that finger is `successor(start)`, so the owner. DKS' lookup does
    /// this: it forwards to the node responsible for the interval that holds the key.
    Infer,
    /// A better-informed choice among the same fingers: of the known nodes before the key,
    /// the one from which the greedy walk is shortest, as if each node knew its fingers'
    /// tables ("know thy neighbour's neighbour", Manku, Naor, Wieder, STOC 2004).
    Lookahead,
}

impl Paths {
    fn mean(&self) -> f64 {
        self.to_predecessor as f64 / self.lookups as f64
    }

    fn mean_messages(&self) -> (f64, f64) {
        let l = self.lookups as f64;
        (self.messages as f64 / l, self.messages_inferred as f64 / l)
    }
}

impl Ring {
    fn add(&self, a: u128, b: u128) -> u128 {
        match self.modulus {
            None => a.wrapping_add(b),
            Some(m) => (a + b) % m,
        }
    }

    /// Clockwise distance from `a` to `b`.
    fn dist(&self, a: u128, b: u128) -> u128 {
        match self.modulus {
            None => b.wrapping_sub(a),
            Some(m) => (b + m - a) % m,
        }
    }

    /// Index of `successor(x)`: the first node at or after `x`.
    fn successor(&self, x: u128) -> usize {
        let i = self.ids.partition_point(|&id| id < x);
        if i == self.ids.len() {
            0
        } else {
            i
        }
    }

    /// Index of the node before the key's owner: the key's predecessor.
    fn predecessor(&self, key: u128) -> usize {
        let owner = self.successor(key);
        (owner + self.ids.len() - 1) % self.ids.len()
    }

    /// A lookup of `key` from node `entry`: the nodes it moves to, and the messages it takes
    /// to reach the owner (those moves and the last one to the owner; 0 when the entry is the
    /// owner). Chord's walk ([`Walk::Greedy`]) stops on the key's predecessor, which names its
    /// successor.
    fn walk(&self, entry: usize, key: u128, how: Walk) -> (u64, u64) {
        let owner = self.successor(key);
        let pred = self.predecessor(key);
        if entry == owner {
            return (0, 0);
        }
        let mut cur = entry;
        let mut moves = 0;
        while cur != pred {
            let n = self.ids[cur];
            // The known nodes before the key are those in (n, pred]: fingers whose start is in
            // (n, pred], i.e. offsets up to the distance to pred. The farthest is the finger
            // of the largest such offset (successor is monotone), or the successor itself.
            let reach = self.dist(n, self.ids[pred]);
            let k = self.offsets.partition_point(|&o| o <= reach);
            let farthest = match k {
                0 => (cur + 1) % self.ids.len(),
                _ => self.successor(self.add(n, self.offsets[k - 1])),
            };
            let next = match how {
                Walk::Greedy => farthest,
                Walk::Infer if self.offsets.get(k).is_some_and(|&o| o <= self.dist(n, key)) => break,
                Walk::Infer => farthest,
                Walk::Lookahead => {
                    // Every known node before the key, scored by the greedy walk from it;
                    // ties go to the farthest.
                    let mut known: Vec<usize> = self.offsets[..k]
                        .iter()
                        .map(|&o| self.successor(self.add(n, o)))
                        .collect();
                    known.push((cur + 1) % self.ids.len());
                    known.sort_unstable_by_key(|&f| std::cmp::Reverse(self.dist(n, self.ids[f])));
                    known.dedup();
                    known
                        .into_iter()
                        .min_by_key(|&f| self.walk(f, key, Walk::Greedy).0)
                        .unwrap_or(farthest)
                }
            };
            debug_assert!(self.dist(n, self.ids[next]) <= reach && next != cur);
            cur = next;
            moves += 1;
        }
        (moves, moves + 1)
    }

    fn lookups(&self, lookups: u64, seed: u64, lookahead: bool) -> Paths {
        let mut rng = Rng::new(seed);
        let mut paths = Paths::default();
        for _ in 0..lookups {
            let entry = rng.below(self.ids.len() as u64) as usize;
            let key = match self.modulus {
                None => (rng.next_u64() as u128) << 64 | rng.next_u64() as u128,
                Some(m) => (rng.next_u64() as u128) % m,
            };
            let (moves, messages) = self.walk(entry, key, Walk::Greedy);
            paths.lookups += 1;
            paths.to_predecessor += moves;
            paths.messages += messages;
            paths.messages_inferred += self.walk(entry, key, Walk::Infer).1;
            if lookahead {
                paths.to_predecessor_lookahead += self.walk(entry, key, Walk::Lookahead).0;
            }
        }
        paths
    }
}

/// The top 128 of an id's 160 bits.
fn top128(id: &Id) -> u128 {
    let (hi, lo) = id.limbs();
    (hi as u128) << 96 | lo >> 32
}

/// A scheme's finger offsets in the model's 128 bits: the core's ([`finger_offsets`]: level i
/// at `floor(2^160 / B^i)`), or, with `from_one`, levels counted up from 1 (`j B^i` below
/// 2^160), the core's offsets before they followed DKS' levels.
fn offsets(base: u32, from_one: bool) -> Vec<u128> {
    let ids: Vec<Id> = if from_one {
        let mut up = Vec::new();
        let mut power = Some(Id::from_u64(1));
        while let Some(p) = power {
            up.extend((1..base).map_while(|j| p.checked_mul_small(j)));
            power = p.checked_mul_small(base);
        }
        up
    } else {
        finger_offsets(base).to_vec()
    };
    let mut offsets: Vec<u128> = ids.iter().map(top128).filter(|&o| o > 0).collect();
    offsets.dedup();
    offsets
}

/// The simulator's ring: node `h` at the SHA-1 of `sim_addr(h)`.
fn random_ring(n: usize, base: u32, from_one: bool) -> Ring {
    let mut ids: Vec<u128> = (0..n)
        .map(|h| top128(&NodeRef::from_addr(sim_addr(h)).id))
        .collect();
    ids.sort_unstable();
    Ring {
        ids,
        modulus: None,
        offsets: offsets(base, from_one),
    }
}

/// N nodes evenly spaced in the 2^128 space (N a power of two): DKS' placement in the
/// simulator's identifier space, whose size is not a power of B for every B.
fn even_ring(n: usize, base: u32, from_one: bool) -> Ring {
    let step = (u128::MAX >> n.trailing_zeros()) + 1;
    Ring {
        ids: (0..n as u128).map(|h| h * step).collect(),
        modulus: None,
        offsets: offsets(base, from_one),
    }
}

/// DKS' ring: `B^L` points, every one a node, offsets `j B^i` below `B^L`.
fn dense_ring(base: u32, levels: u32) -> Ring {
    let m = (base as u128).pow(levels);
    let mut offsets = Vec::new();
    for i in 0..levels {
        for j in 1..base as u128 {
            offsets.push(j * (base as u128).pow(i));
        }
    }
    Ring {
        ids: (0..m).collect(),
        modulus: Some(m),
        offsets,
    }
}

/// `L` with `B^L = N`, if N is a power of B.
fn exact_levels(base: u32, n: u64) -> Option<u32> {
    let mut p = 1u64;
    for l in 0..64 {
        if p == n {
            return Some(l);
        }
        p = p.checked_mul(base as u64)?;
    }
    None
}

/// Simulated milliseconds of maintenance before the lookups, as in `results/lookup-schemes`.
const MAINTENANCE_MS: u64 = 500;

fn routing(base: u32) -> Routing {
    if base == 2 {
        Routing::Classic
    } else {
        Routing::Base(base)
    }
}

fn scheme_name(base: u32) -> String {
    if base == 2 {
        "classic".into()
    } else {
        format!("base:{base}")
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}"))
}

/// One ring size and scheme, measured.
struct Row {
    log2: u32,
    base: u32,
    analysis: f64,
    /// `(B-1)/B L + (m-1)/m` for `N = m B^L`, `1 <= m < B`: the digit count on an evenly
    /// spaced ring whose bottom level holds m nodes.
    digits: f64,
    dense: Option<Paths>,
    even_from_one: Paths,
    even: Paths,
    random_from_one: Paths,
    random: Paths,
    sim: Option<LookupReport>,
    /// Fingers of the simulator's nodes when the lookups start that differ from
    /// `successor(start)`, and fingers checked.
    wrong_fingers: Option<(u64, u64)>,
}

/// The simulator's configuration for one row.
fn sim_config(args: &Args, n: usize, base: u32) -> LookupSimConfig {
    LookupSimConfig {
        nodes: n,
        routing: routing(base),
        successors: 1,
        lookups: args.lookups,
        workload: Workload::Uniform,
        seed: args.seed,
        maintenance_ms: MAINTENANCE_MS,
        ..LookupSimConfig::default()
    }
}

/// Runs the simulator's maintenance window (the state its lookups start from) and checks
/// every finger of every node against the oracle.
fn check_fingers(config: LookupSimConfig) -> (u64, u64) {
    let mut sim = LookupSim::new(config);
    sim.run_until(MAINTENANCE_MS);
    let mut ring: Vec<NodeRef> = (0..sim.len()).map(|i| sim.node(i).me()).collect();
    ring.sort_unstable_by_key(|n| n.id);
    let successor = |id: &Id| ring[ring.partition_point(|n| n.id < *id) % ring.len()];
    let (mut wrong, mut checked) = (0, 0);
    for i in 0..sim.len() {
        let node = sim.node(i);
        let table = node.routing();
        for f in 0..table.finger_count() {
            let want = Some(successor(&table.finger_start(f))).filter(|s| s.addr != node.me().addr);
            checked += 1;
            if table.finger(f).map(|n| n.addr) != want.map(|n| n.addr) {
                wrong += 1;
            }
        }
    }
    (wrong, checked)
}

fn measure(args: &Args, log2: u32, base: u32) -> Row {
    let n = 1u64 << log2;
    let b = base as f64;
    let (mut levels, mut m) = (0u32, n);
    while m >= base as u64 {
        m /= base as u64;
        levels += 1;
    }
    let m = m as f64;
    let (l, s) = (args.lookups, args.seed);
    Row {
        log2,
        base,
        analysis: (b - 1.0) / b * (n as f64).ln() / b.ln(),
        digits: (b - 1.0) / b * levels as f64 + (m - 1.0) / m,
        dense: exact_levels(base, n).map(|levels| dense_ring(base, levels).lookups(l, s, false)),
        even_from_one: even_ring(n as usize, base, true).lookups(l, s, false),
        even: even_ring(n as usize, base, false).lookups(l, s, false),
        random_from_one: random_ring(n as usize, base, true).lookups(l, s, false),
        random: random_ring(n as usize, base, false).lookups(l, s, true),
        sim: (!args.model_only).then(|| LookupSim::new(sim_config(args, n as usize, base)).run()),
        wrong_fingers: (!args.model_only).then(|| check_fingers(sim_config(args, n as usize, base))),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    for &log2 in &args.log2_n {
        for &base in &args.bases {
            rows.push(measure(&args, log2, base));
            eprint!(".");
        }
    }
    eprintln!();
    let md = render(&args, &rows)?;
    match &args.out {
        Some(path) => std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{md}"),
    }
    Ok(())
}

fn pct(v: f64, of: f64) -> String {
    format!("{:+.1}%", (v / of - 1.0) * 100.0)
}

fn render(args: &Args, rows: &[Row]) -> anyhow::Result<String> {
    let mut md = String::new();
    let sizes: Vec<String> = args.log2_n.iter().map(|l| l.to_string()).collect();
    let bases: Vec<String> = args.bases.iter().map(|b| b.to_string()).collect();
    let command = format!(
        "cargo run --release -p chordkv-bench --bin finger_analysis -- --out results/lookup-schemes/finger-analysis.md --lookups {} --seed {} --log2-n {} --bases {}{}",
        args.lookups,
        args.seed,
        sizes.join(","),
        bases.join(","),
        if args.model_only { " --model-only" } else { "" }
    );
    writeln!(md, "# Finger expansion against its analysis\n")?;
    writeln!(
        md,
        "With fingers alone (`--successors 1`), `base:B` routing takes more hops to the key's predecessor than DKS' (B-1)/B log_B N, by an amount that depends on B and hardly on N. This file finds out why, with a model of the routing alone (`bench/src/bin/finger_analysis.rs`) beside the simulator. Every number below comes from:\n\n```\n{command}\n```\n"
    )?;
    writeln!(
        md,
        "**The model.** Node n knows its successor and successor(n + o) for every finger offset o of the scheme, exactly; a lookup moves each time to the known node closest before the key (SIGCOMM'01 section 4.3, `closest_preceding_node`) until it stands on the key's predecessor, and counts the nodes it moved to (SIGCOMM'01 Fig. 10's path length, the simulator's \"to predecessor\"). {} uniform keys from random entries per row. Placements: *dense* is the ring the DKS analysis assumes (an identifier space of exactly N = B^L points, every point a node: a lookup takes one hop per non-zero base-B digit of its distance, (B-1)/B per level); *even* is N nodes evenly spaced in the 2^160 ring; *random* is the simulator's ring itself (each node at the SHA-1 of its address). `j B^i` columns use the finger offsets `base:B` had before this analysis (levels counted up from 1, j B^i below 2^160); the others use today's (DKS' levels, j floor(2^160 / B^i), `core/src/chord/routing.rs` `finger_offsets`). The simulator column is `chordkv sim --nodes N --routing SCHEME --successors 1 --lookups {} --seed {} --maintenance-ms {MAINTENANCE_MS}`'s \"to the predecessor\".\n",
        args.lookups, args.lookups, args.seed
    )?;

    writeln!(md, "## 1. Path length to the predecessor\n")?;
    writeln!(
        md,
        "| N | scheme | (B-1)/B log_B N | digits, N = m B^L | dense | even, j B^i | even | random, j B^i | random | random - even | simulator | simulator vs (B-1)/B log_B N |"
    )?;
    writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for r in rows {
        writeln!(
            md,
            "| 2^{} | {} | {:.3} | {:.3} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:+.3} | {} | {} |",
            r.log2,
            scheme_name(r.base),
            r.analysis,
            r.digits,
            fmt(r.dense.as_ref().map(Paths::mean)),
            r.even_from_one.mean(),
            r.even.mean(),
            r.random_from_one.mean(),
            r.random.mean(),
            r.random.mean() - r.even.mean(),
            fmt(r.sim.as_ref().map(|s| s.hops.mean_to_predecessor)),
            r.sim
                .as_ref()
                .map_or("-".into(), |s| pct(s.hops.mean_to_predecessor, r.analysis)),
        )?;
    }
    let worst = rows
        .iter()
        .filter_map(|r| {
            r.sim
                .as_ref()
                .map(|s| (s.hops.mean_to_predecessor - r.random.mean()).abs())
        })
        .fold(0.0, f64::max);
    let (wrong, checked) = rows
        .iter()
        .filter_map(|r| r.wrong_fingers)
        .fold((0, 0), |(w, c), (rw, rc)| (w + rw, c + rc));
    writeln!(md)?;
    writeln!(
        md,
        "What the columns show, left to right:\n\n\
1. **dense = (B-1)/B log_B N.** The model reproduces the analysis where its assumption holds: every identifier a node.\n\
2. **N not a power of B** (e.g. base:32 at 2^12, base:8 at 2^16): the formula counts the last, partial level as a fraction of a level, but a level that holds m nodes costs (m-1)/m, not (B-1)/B times a fraction: the *digits* column. Evenly spaced nodes take that many, so there the formula itself is off, not the routing.\n\
3. **even, j B^i vs even: the finger offsets (fixed).** When 2^160 is not a power of B (base:8: 2^160 = 2 x 8^53; base:64) the offsets j B^i counted up from 1 put the top level at one finger (half the ring) and every level a factor off the divisions of the ring, so even evenly spaced nodes took more hops than the digits. DKS' levels divide the ring by B from the top (j floor(2^160 / B^i)); with them even = digits for every base, and on random ids base:8 and base:64 take fewer hops too (*random, j B^i* against *random*). Bases with 2^160 a power of B (2, 4, 16, 32) have the same offsets either way.\n\
4. **random - even: random placement.** What remains is placement: with every identifier a node the last level (offsets 1..B-1 node spacings) resolves the last digit, but random ids leave exponential gaps between nodes, the predecessor's gap often far below the mean spacing, and a lookup needs fingers finer than the spacing, extra levels at the bottom, to land on it. The gap distribution does not depend on N, so where N is a power of B (the rows with a *dense* figure) neither does the excess, and it grows with B; where the bottom level is partial, evenly spaced nodes already pay for it and random ids add less. For classic Chord it is negative: successor(n + 2^i) lies an exponential gap past its start, which skips low bits for free, and with one finger per level that outweighs the extra levels (SIGCOMM'01 Fig. 10 is below 1/2 log2 N too).\n\
5. **simulator = random.** The simulator's real nodes take the model's path within {worst:.3} hops at every size and base, so routing takes no wasted step (none at the end beyond the greedy walk to the predecessor). Their fingers are right when the lookups start: after the maintenance window (the ring bootstrapped from the oracle, then stabilize and fix_fingers running), {wrong} of the {checked} fingers of all nodes of all rows differ from successor(start).\n"
    )?;

    writeln!(md, "## 2. Could a better choice of hop close the gap?\n")?;
    writeln!(
        md,
        "*lookahead* picks, among the known nodes before the key, the one from which the greedy walk is shortest, as if a node knew its fingers' own tables (\"know thy neighbour's neighbour\", Manku, Naor, Wieder, STOC 2004): far more than a node knows (and still not the shortest path through the fingers, which no node can see), on the random ring.\n"
    )?;
    writeln!(
        md,
        "| N | scheme | (B-1)/B log_B N | random | random, lookahead | lookahead vs (B-1)/B log_B N |"
    )?;
    writeln!(md, "|---:|---|---:|---:|---:|---:|")?;
    for r in rows {
        let la = r.random.to_predecessor_lookahead as f64 / r.random.lookups as f64;
        writeln!(
            md,
            "| 2^{} | {} | {:.3} | {:.3} | {la:.3} | {} |",
            r.log2,
            scheme_name(r.base),
            r.analysis,
            r.random.mean(),
            pct(la, r.analysis)
        )?;
    }
    writeln!(
        md,
        "\nKnowing the next node's table would take classic and base:4 below (B-1)/B log_B N; for base:16 and above a lookup stays above it even so, at every N here: the excess comes from where the nodes are, not from how the next hop is chosen. (The lookahead itself is not on offer: a node would have to hold and refresh each finger's table, about ((B-1) log_B N)^2 entries.)\n"
    )?;

    writeln!(md, "## 3. Messages to the owner\n")?;
    writeln!(
        md,
        "Chord's walk ends on the predecessor, which names its successor: one more message reaches the owner (*Chord*: path + 1, the simulator's `hops`). DKS' lookup forwards to the node responsible for the interval that holds the key, and a finger is successor(its start), so a node one of whose finger starts lies in (predecessor, key] names the owner itself (*owner from a finger*). On the dense ring this is DKS' own count, (B-1)/B log_B N messages; on the random ring it saves about one message per lookup for every scheme, the step to the predecessor, but leaves the gap to the analysis as it is. The core does not do it: a finger is only as fresh as its last refresh, and an answer naming a stale finger as the owner would cost a redirect (a client operation) or a wrong successor (a join).\n"
    )?;
    writeln!(
        md,
        "| N | scheme | dense: Chord | dense: owner from a finger | random: Chord | random: owner from a finger | simulator (hops mean) |"
    )?;
    writeln!(md, "|---:|---|---:|---:|---:|---:|---:|")?;
    for r in rows {
        writeln!(
            md,
            "| 2^{} | {} | {} | {} | {:.3} | {:.3} | {} |",
            r.log2,
            scheme_name(r.base),
            fmt(r.dense.as_ref().map(|d| d.mean_messages().0)),
            fmt(r.dense.as_ref().map(|d| d.mean_messages().1)),
            r.random.mean_messages().0,
            r.random.mean_messages().1,
            fmt(r.sim.as_ref().map(|s| s.hops.mean)),
        )?;
    }
    Ok(md)
}
