//! The lookup schemes compared in the simulator: `results/lookup-schemes/README.md` and its
//! SVG plots, every number from a run of `chordkv sim`'s engine ([`LookupSim`], the real node
//! state machines on a simulated network).
//!
//! ```text
//! cargo run --release -p chordkv-bench --bin lookup_schemes [-- --out results/lookup-schemes]
//!     [--max-log2 17] [--seed 1]
//! ```
//!
//! Sections (each table and plot is written with the command that regenerates it):
//!
//! 1. The Chord paper's figures: path length against N (SIGCOMM'01 Fig. 10), N = 1000 with
//!    r = 20 (ToN 2003 Table II), failed lookups against the fraction of failed nodes
//!    (SIGCOMM'01 Fig. 11).
//! 2. Hops against N (2^4 .. 2^17) for classic, base:4, base:16, classic with a location cache
//!    and onehop; hops against routing-state size.
//! 3. Hops under uniform, zipfian and hot-key workloads.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use chordkv_core::chord::Routing;
use chordkv_harness::sim::lookup::{LookupReport, LookupSim, LookupSimConfig, Workload};
use loadgen::plot::{xy_svg, XySeries};

/// Regenerates results/lookup-schemes from the simulator.
#[derive(Debug, Parser)]
struct Args {
    /// Output directory.
    #[arg(long, default_value = "results/lookup-schemes")]
    out: PathBuf,
    /// Largest ring of the hops-against-N sweep, as log2 of its size.
    #[arg(long, default_value_t = 17)]
    max_log2: u32,
    /// Seed of every run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Location cache entries of the `classic+cache` scheme.
const CACHE_ENTRIES: usize = 256;
/// Simulated milliseconds of maintenance measured per run in the sweeps.
const MAINTENANCE_MS: u64 = 500;

#[derive(Clone, Copy)]
struct Scheme {
    name: &'static str,
    routing: Routing,
    cache: usize,
}

const SCHEMES: [Scheme; 5] = [
    Scheme {
        name: "classic",
        routing: Routing::Classic,
        cache: 0,
    },
    Scheme {
        name: "base:4",
        routing: Routing::Base(4),
        cache: 0,
    },
    Scheme {
        name: "base:16",
        routing: Routing::Base(16),
        cache: 0,
    },
    Scheme {
        name: "classic+cache",
        routing: Routing::Classic,
        cache: CACHE_ENTRIES,
    },
    Scheme {
        name: "onehop",
        routing: Routing::OneHop,
        cache: 0,
    },
];

/// The `chordkv sim` command line equivalent to a configuration.
fn command(c: &LookupSimConfig) -> String {
    let mut s = format!(
        "chordkv sim --nodes {} --routing {} --successors {} --lookups {} --workload {} --seed {} \
         --maintenance-ms {}",
        c.nodes, c.routing, c.successors, c.lookups, c.workload, c.seed, c.maintenance_ms
    );
    if c.cache_entries > 0 {
        let _ = write!(s, " --cache {}", c.cache_entries);
    }
    if c.fail_fraction > 0.0 {
        let _ = write!(s, " --fail-fraction {}", c.fail_fraction);
    }
    if c.keys > 0 {
        let _ = write!(s, " --keys {}", c.keys);
    }
    s
}

fn run(c: &LookupSimConfig) -> LookupReport {
    eprint!("{} ... ", command(c));
    let r = LookupSim::new(c.clone()).run();
    eprintln!(
        "mean {:.3} hops, failed {:.4}, {:.1} s",
        r.hops.mean,
        r.failed_fraction,
        r.wall_ms as f64 / 1000.0
    );
    r
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let seed = args.seed;
    let regen = format!(
        "cargo run --release -p chordkv-bench --bin lookup_schemes -- --out {} --max-log2 {} --seed {seed}",
        args.out.display(),
        args.max_log2
    );
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Lookup schemes in the simulator\n\n\
         Every number below comes from `chordkv sim`'s engine (`harness/src/sim/lookup.rs`): the real \
         node state machines on a simulated network, the ring built from the oracle as in the \
         Chord paper's simulator, lookups as client `GET`s from random live nodes routed exactly \
         as a node routes client operations. Regenerate this file and its plots with:\n\n\
         ```\n{regen}\n```\n\n\
         Each row can be reproduced alone with the `chordkv sim` command under its table \
         (`chordkv sim --help` documents the flags).\n\n\
         **How a hop is counted.** One hop per message to another node on the way to the owner: a \
         `FIND_SUCCESSOR` step, the operation sent to the owner, a redirect followed. A key the \
         entry owns takes 0 hops; a key the entry's successor list resolves takes 1. The \
         journal version of the Chord paper (ToN 2003) counts the same way (its path includes \
         the owner). SIGCOMM'01 Fig. 10 counts the nodes visited to reach the key's \
         *predecessor*, without the last step to the owner: for that comparison we print \
         `to predecessor` = max(hops - 1, 0).\n\n\
         **Failed lookups** (SIGCOMM'01 section 6.4): a lookup fails unless the node that owned \
         the key before the failures serves it. Nodes keep one copy (`replicas = 0`), as in \
         the paper, so the keys of crashed nodes can only fail; `owners crashed` is the \
         fraction of lookups whose key's owner crashed.\n"
    );

    // --- 1. the paper ------------------------------------------------------------------------
    let _ = writeln!(md, "## 1. The Chord paper's figures\n");
    let _ = writeln!(
        md,
        "### Path length against N (SIGCOMM'01 Fig. 10: about 1/2 log2 N)\n\n\
         Classic fingers, a successor list of 1 (the SIGCOMM'01 protocol routes by fingers), \
         10,000 uniform lookups per ring, 100 keys per node.\n\n\
         | N | 1/2 log2 N | to predecessor (SIGCOMM count) | hops (every message) | p1 | p50 | p99 |\n\
         |---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut cmd_example = String::new();
    for k in 3..=14u32 {
        let c = LookupSimConfig {
            nodes: 1 << k,
            successors: 1,
            lookups: 10_000,
            seed,
            maintenance_ms: MAINTENANCE_MS,
            ..LookupSimConfig::default()
        };
        let r = run(&c);
        cmd_example = command(&c);
        let _ = writeln!(
            md,
            "| 2^{k} | {:.1} | {:.2} | {:.2} | {} | {} | {} |",
            0.5 * k as f64,
            r.hops.mean_to_predecessor,
            r.hops.mean,
            r.hops.p1,
            r.hops.p50,
            r.hops.p99
        );
    }
    let _ = writeln!(md, "\nCommand per row (here N = 2^14): `{cmd_example}`\n");

    let _ = writeln!(
        md,
        "### N = 1000, r = 20 (ToN 2003 Table II: 3.84 hops without failures, about 5.1 with half \
         the nodes failed)\n\n\
         Routing through the successor list as well as the fingers. Failures are simultaneous and \
         the lookups start before stabilization repairs anything.\n\n\
         | failed nodes | paper mean | hops mean | p1 | p50 | p99 | failed lookups | owners crashed |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (p, paper) in [(0.0, "3.84"), (0.5, "~5.1")] {
        let c = LookupSimConfig {
            nodes: 1000,
            successors: 20,
            lookups: 10_000,
            fail_fraction: p,
            seed,
            maintenance_ms: MAINTENANCE_MS,
            ..LookupSimConfig::default()
        };
        let r = run(&c);
        cmd_example = command(&c);
        let _ = writeln!(
            md,
            "| {:.0}% | {paper} | {:.2} | {} | {} | {} | {:.4} | {:.4} |",
            p * 100.0,
            r.hops.mean,
            r.hops.p1,
            r.hops.p50,
            r.hops.p99,
            r.failed_fraction,
            r.owner_crashed_fraction
        );
    }
    let _ = writeln!(md, "\nCommand (50% row): `{cmd_example}`\n");

    let _ = writeln!(
        md,
        "### Failed lookups against failed nodes (SIGCOMM'01 Fig. 11: about p)\n\n\
         10^4 nodes, successor list of 8 (the default), a fraction p of the nodes crash at once, \
         then 10,000 lookups.\n\n\
         | p | failed lookups | owners crashed | hops mean | hops p99 |\n\
         |---:|---:|---:|---:|---:|"
    );
    for p in [0.1, 0.2, 0.3, 0.4, 0.5] {
        let c = LookupSimConfig {
            nodes: 10_000,
            lookups: 10_000,
            fail_fraction: p,
            seed,
            maintenance_ms: MAINTENANCE_MS,
            ..LookupSimConfig::default()
        };
        let r = run(&c);
        cmd_example = command(&c);
        let _ = writeln!(
            md,
            "| {p} | {:.4} | {:.4} | {:.2} | {} |",
            r.failed_fraction, r.owner_crashed_fraction, r.hops.mean, r.hops.p99
        );
    }
    let _ = writeln!(md, "\nCommand (p = 0.5 row): `{cmd_example}`\n");

    // --- 2. hops against N and state -----------------------------------------------------------
    let _ = writeln!(
        md,
        "## 2. Hops against N, and against routing state\n\n\
         Uniform keys (100 per node), max(10,000, 4 N) lookups with one in flight per node, a \
         successor list of 8. `classic+cache` has a {CACHE_ENTRIES}-entry location cache. \
         State is the distinct nodes a node's routing state names (fingers and successors, or \
         the membership table), cache entries not included. Maintenance is routing \
         maintenance requests per node per second over the first {MAINTENANCE_MS} ms (each has a \
         reply; onehop's figure has no membership events in a static ring). `fix_fingers` \
         refreshes one remote finger per round, cycling through about log2 N of them, cheap ones \
         first after the bootstrap, so this short window under-counts the steady rate of the \
         finger schemes: give `--maintenance-ms 4000` for a steadier figure.\n\n\
         ![hops against N](hops-vs-n.svg)\n\n\
         ![hops against routing state](hops-vs-state.svg)\n\n\
         | N | scheme | hops mean | p1 | p50 | p99 | state per node | maintenance msgs/node/s | cache hit rate |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut by_scheme: Vec<Vec<(u32, LookupReport)>> = vec![Vec::new(); SCHEMES.len()];
    for k in 4..=args.max_log2 {
        for (si, s) in SCHEMES.iter().enumerate() {
            let n = 1usize << k;
            let c = LookupSimConfig {
                nodes: n,
                routing: s.routing,
                cache_entries: s.cache,
                lookups: (4 * n as u64).max(10_000),
                seed,
                maintenance_ms: MAINTENANCE_MS,
                ..LookupSimConfig::default()
            };
            let r = run(&c);
            cmd_example = command(&c);
            let _ = writeln!(
                md,
                "| 2^{k} | {} | {:.2} | {} | {} | {} | {:.1} | {:.1} | {} |",
                s.name,
                r.hops.mean,
                r.hops.p1,
                r.hops.p50,
                r.hops.p99,
                r.state_per_node,
                r.maintenance_msgs_per_node_per_s,
                if s.cache > 0 {
                    format!("{:.3}", r.cache_hit_rate)
                } else {
                    "-".into()
                }
            );
            by_scheme[si].push((k, r));
        }
    }
    let _ = writeln!(md, "\nCommand per row (here the last): `{cmd_example}`\n");
    let series: Vec<XySeries> = SCHEMES
        .iter()
        .enumerate()
        .map(|(i, s)| XySeries {
            name: s.name.to_string(),
            points: by_scheme[i]
                .iter()
                .map(|(k, r)| (*k as f64, r.hops.mean))
                .collect(),
            color: i,
            dashed: false,
            bars: Vec::new(),
        })
        .chain(std::iter::once(XySeries {
            name: "1/2 log2 N".to_string(),
            points: (4..=args.max_log2).map(|k| (k as f64, 0.5 * k as f64)).collect(),
            color: 5,
            dashed: true,
            bars: Vec::new(),
        }))
        .collect();
    let svg = xy_svg(
        "Mean hops per lookup against ring size (uniform keys)",
        "nodes N",
        "mean hops",
        &series,
        &|x| format!("2^{x:.0}"),
    );
    std::fs::write(args.out.join("hops-vs-n.svg"), svg)?;
    let series: Vec<XySeries> = SCHEMES
        .iter()
        .enumerate()
        .map(|(i, s)| XySeries {
            name: s.name.to_string(),
            points: by_scheme[i]
                .iter()
                .map(|(_, r)| (r.state_per_node.max(1.0).log2(), r.hops.mean))
                .collect(),
            color: i,
            dashed: false,
            bars: Vec::new(),
        })
        .collect();
    let svg = log_x_svg(
        "Mean hops against routing state per node (one point per ring size)",
        "distinct nodes in the routing state (log scale)",
        "mean hops",
        &series,
    );
    std::fs::write(args.out.join("hops-vs-state.svg"), svg)?;

    // --- 3. workloads -------------------------------------------------------------------------
    let n = 4096usize;
    let lookups = 100_000u64;
    let _ = writeln!(
        md,
        "## 3. Workloads: where caching helps\n\n\
         N = {n}, {lookups} lookups (about 24 per node, one in flight per node), keys from \
         100 per node: uniform, YCSB zipfian (theta 0.99), and hot key (every lookup on one key, \
         loadgen's `hotkey`).\n\n\
         ![hops by workload](workloads.svg)\n\n\
         | workload | scheme | hops mean | p50 | p99 | cache hit rate |\n\
         |---|---|---:|---:|---:|---:|"
    );
    let workloads = [Workload::Uniform, Workload::Zipfian, Workload::Hotkey];
    let mut wl_points: Vec<Vec<(f64, f64)>> = vec![Vec::new(); SCHEMES.len()];
    for (wi, w) in workloads.iter().enumerate() {
        for (si, s) in SCHEMES.iter().enumerate() {
            let c = LookupSimConfig {
                nodes: n,
                routing: s.routing,
                cache_entries: s.cache,
                lookups,
                workload: *w,
                seed,
                maintenance_ms: MAINTENANCE_MS,
                ..LookupSimConfig::default()
            };
            let r = run(&c);
            cmd_example = command(&c);
            let _ = writeln!(
                md,
                "| {w} | {} | {:.2} | {} | {} | {} |",
                s.name,
                r.hops.mean,
                r.hops.p50,
                r.hops.p99,
                if s.cache > 0 {
                    format!("{:.3}", r.cache_hit_rate)
                } else {
                    "-".into()
                }
            );
            wl_points[si].push((wi as f64, r.hops.mean));
        }
    }
    let _ = writeln!(md, "\nCommand per row (here the last): `{cmd_example}`\n");
    let series: Vec<XySeries> = SCHEMES
        .iter()
        .enumerate()
        .map(|(i, s)| XySeries {
            name: s.name.to_string(),
            points: wl_points[i].clone(),
            color: i,
            dashed: false,
            bars: Vec::new(),
        })
        .collect();
    let names = ["uniform", "zipfian", "hotkey"];
    let svg = xy_svg(
        &format!("Mean hops by workload, N = {n}"),
        "workload",
        "mean hops",
        &series,
        &|x| names.get(x as usize).copied().unwrap_or("").to_string(),
    );
    std::fs::write(args.out.join("workloads.svg"), svg)?;

    // --- 4. maintenance under failures -----------------------------------------------------------
    let n = 4096usize;
    let _ = writeln!(
        md,
        "## 4. Maintenance with failures\n\n\
         N = {n}; 5% of the nodes crash at once, then 50,000 uniform lookups (one in flight per node). \
         `before` is routing maintenance per node per second over the first {MAINTENANCE_MS} ms \
         (static ring); `during` is over the lookups, after the crash: the repairs (stabilize \
         finding new successors, fingers re-resolved) and, for onehop, the failure notices \
         broadcast to every member. Requests only; each has a reply.\n\n\
         | scheme | maintenance before | maintenance during | failed lookups | owners crashed | hops mean | hops p99 |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    for s in SCHEMES.iter() {
        let c = LookupSimConfig {
            nodes: n,
            routing: s.routing,
            cache_entries: s.cache,
            lookups: 50_000,
            fail_fraction: 0.05,
            seed,
            maintenance_ms: MAINTENANCE_MS,
            ..LookupSimConfig::default()
        };
        let r = run(&c);
        cmd_example = command(&c);
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.4} | {:.4} | {:.2} | {} |",
            s.name,
            r.maintenance_msgs_per_node_per_s,
            r.maintenance_during_lookups_per_node_per_s,
            r.failed_fraction,
            r.owner_crashed_fraction,
            r.hops.mean,
            r.hops.p99
        );
    }
    let _ = writeln!(md, "\nCommand per row (here the last): `{cmd_example}`\n");

    let _ = writeln!(
        md,
        "## Scale\n\nThe 10^5- and 10^6-node runs (time and memory) are in [scale.md](scale.md), \
         each with its command.\n\n## Finger expansion against its analysis\n\nWhy `base:B` with \
         fingers alone takes more hops to the predecessor than DKS' (B-1)/B log_B N (random \
         placement, and for bases such as 8 finger offsets that did not follow DKS' levels), \
         with a model of the routing beside the simulator: [finger-analysis.md](finger-analysis.md), \
         with its command (`bench/src/bin/finger_analysis.rs`)."
    );
    std::fs::write(args.out.join("README.md"), md)?;
    eprintln!("wrote {}", args.out.join("README.md").display());
    Ok(())
}

/// A line chart whose x values are log2 of the quantity, with ticks at powers of 2 (loadgen's
/// `xy_svg` puts a tick at every distinct x, too many for this plot).
fn log_x_svg(title: &str, x_title: &str, y_title: &str, series: &[XySeries]) -> String {
    const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
    let (w, h, left, top, right, bottom) = (900.0, 480.0, 70.0, 45.0, 190.0, 60.0);
    let pts = series.iter().flat_map(|s| s.points.iter());
    let x_max = pts.clone().map(|p| p.0).fold(1.0f64, f64::max).ceil();
    let y_max = pts.map(|p| p.1).fold(1.0f64, f64::max).ceil();
    let (pw, ph) = (w - left - right, h - top - bottom);
    let px = |x: f64| left + x / x_max * pw;
    let py = |y: f64| top + ph - y / y_max * ph;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{title}</text>"#,
        w / 2.0
    );
    // Every power of two while they fit, every other one beyond 2^12.
    let every = if x_max > 12.0 { 2 } else { 1 };
    for k in (0..=(x_max as u32)).step_by(every) {
        let x = px(k as f64);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 16.0,
            1u64 << k
        );
    }
    for k in 0..=(y_max as u32) {
        let y = py(k as f64);
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{k}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x_title}</text>"#,
        left + pw / 2.0,
        top + ph + 38.0
    );
    let (tx, ty) = (left - 45.0, top + ph / 2.0);
    let _ = writeln!(
        out,
        r#"<text x="{tx}" y="{ty}" text-anchor="middle" transform="rotate(-90 {tx} {ty})">{y_title}</text>"#
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[s.color % COLORS.len()];
        let line: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
            line.join(" ")
        );
        for &(x, y) in &s.points {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"/>"#,
                px(x),
                py(y)
            );
        }
        let ly = top + 10.0 + 20.0 * i as f64;
        let lx = left + pw + 15.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            s.name
        );
    }
    out.push_str("</svg>\n");
    out
}
