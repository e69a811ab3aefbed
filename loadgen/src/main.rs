//! `loadgen --workload FILE [--nodes ADDR,...] [--duration SECS] [--rate OPS] [--out DIR]
//! [--seed S]`: runs a workload and writes `results/<name>-<UTC timestamp>/`. Exit code 0
//! when every acknowledged write was found at the end and no read was stale; 1 when writes
//! were lost, keys could not be read back, the run failed, or (unless the local cluster runs
//! `partition_policy: available`) a read was stale or returned a deleted value; 2 for bad
//! arguments or a bad workload file.
//! A workload with `sweep:` runs an experiment instead and writes its table and plot (into
//! `--out DIR`, e.g. `--out results`): `data-loss.md` and `.svg` (kill f nodes at once),
//! `kill-rate.md` and `.svg` (one kill every T s), `partition-faults.md`,
//! `partition-faults.svg` and `pause-faults.svg` (one partition or pause of length L).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use loadgen::remote::RemoteCluster;
use loadgen::run::{run_with_control, RunOptions, DEFAULT_RESULTS_DIR};
use loadgen::sweep::{self, SweepOptions};
use loadgen::workload::Workload;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Replays a YAML workload against a chordkv cluster"
)]
struct Args {
    /// The workload file (see workloads/).
    #[arg(long)]
    workload: PathBuf,
    /// Target a running cluster instead of starting a local one: its nodes' addresses,
    /// comma-separated, each IP:PORT or HOST:PORT (e.g. localhost:7000,localhost:7001).
    #[arg(long, value_delimiter = ',', value_name = "ADDR,...", value_parser = chordkv_client::resolve_addr)]
    nodes: Option<Vec<SocketAddr>>,
    /// Measured seconds (overrides the file's duration_s).
    #[arg(long)]
    duration: Option<f64>,
    /// Open loop at this many operations per second in total (overrides rate_per_s).
    #[arg(long)]
    rate: Option<f64>,
    /// The results directory [default: results/<name>-<UTC timestamp>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of every random choice (overrides the file's seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Where requests enter: random, fixed or owner (client-side routing; overrides entry).
    #[arg(long)]
    entry: Option<loadgen::workload::Entry>,
    /// The local cluster's lookup scheme: classic, base:B or onehop (overrides cluster.routing).
    #[arg(long)]
    routing: Option<chordkv_core::chord::Routing>,
    /// Entries of each local node's location cache (overrides cluster.cache).
    #[arg(long)]
    cache: Option<usize>,
    /// Nodes of the local cluster (overrides cluster.nodes).
    #[arg(long = "cluster-nodes")]
    cluster_nodes: Option<usize>,
    /// The chordkv binary for a local cluster [default: $CHORDKV_BIN, else next to loadgen].
    #[arg(long)]
    chordkv: Option<PathBuf>,
    /// A cluster deployed with deploy/cluster.sh: the workload's faults act on its hosts over
    /// ssh; without --nodes, the load goes to every running node of the inventory.
    #[arg(long, conflicts_with = "ceiling")]
    inventory: Option<PathBuf>,
    /// No progress bar or lines.
    #[arg(long)]
    quiet: bool,
    /// The user to log in as when the ring requires credentials (`--requirepass`: default).
    #[arg(long, default_value = "default")]
    user: String,
    /// The password to log in with; $CHORDKV_PASSWORD when not given. A local cluster whose
    /// `cluster:` section sets `requirepass` is logged in to with it.
    #[arg(long)]
    password: Option<String>,
    /// Reach the nodes over TLS (nodes started with --tls-cert; a local cluster gets its
    /// `tls_cert`/`tls_key` from the workload's `cluster:` section). Needs --tls-ca.
    #[arg(long, requires = "tls_ca")]
    tls: bool,
    /// With --tls: the CA certificates (PEM) the nodes' certificates are checked against.
    #[arg(long = "tls-ca", value_name = "FILE", requires = "tls")]
    tls_ca: Option<PathBuf>,
    /// With --tls-ca: the client certificate to offer (PEM), for nodes with --tls-ca.
    #[arg(
        long = "tls-cert",
        value_name = "FILE",
        requires = "tls_key",
        requires = "tls_ca"
    )]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long = "tls-key", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The name the nodes' certificates carry [default: each node's IP address].
    #[arg(long = "tls-server-name", value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// Measure loadgen's own ceiling: run the workload against an in-process null target
    /// (one map, no routing or replication) instead of a cluster; faults are skipped.
    #[arg(long, conflicts_with = "nodes")]
    ceiling: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = loadgen::interrupt::install() {
        eprintln!("error: cannot take Ctrl-C and SIGTERM: {e}");
        return ExitCode::from(1);
    }
    let mut workload = match Workload::load(&args.workload) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(d) = args.duration {
        workload.duration_s = d;
    }
    if let Some(r) = args.rate {
        workload.rate_per_s = Some(r);
    }
    if let Some(s) = args.seed {
        workload.seed = s;
    }
    if let Some(e) = args.entry {
        workload.entry = e;
    }
    if let Some(r) = args.routing {
        workload.cluster.node.routing = r;
    }
    if let Some(c) = args.cache {
        workload.cluster.node.cache = c;
    }
    if let Some(n) = args.cluster_nodes {
        workload.cluster.nodes = n;
    }
    let password = args
        .password
        .clone()
        .or_else(|| std::env::var("CHORDKV_PASSWORD").ok());
    workload.access.login = match (password, &workload.cluster.node.requirepass) {
        (Some(p), _) => Some(chordkv_client::Credentials {
            user: args.user.clone(),
            password: p.into_bytes().into(),
        }),
        (None, Some(p)) if args.nodes.is_none() && args.inventory.is_none() => {
            Some(chordkv_client::Credentials {
                user: "default".into(),
                password: p.clone().into_bytes().into(),
            })
        }
        _ => None,
    };
    if let (true, Some(ca)) = (args.tls, &args.tls_ca) {
        let identity = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        match chordkv_client::TlsClient::from_files(ca, identity, args.tls_server_name.as_deref()) {
            Ok(tls) => workload.access.tls = Some(tls),
            Err(e) => {
                eprintln!("error: --tls-ca: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Err(e) = workload.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // Refused before anything starts (or any ssh to an inventory's hosts).
    if workload.has_partitions() {
        if args.nodes.is_some() || args.inventory.is_some() {
            eprintln!(
                "error: partition faults need the local cluster in network namespaces; a cluster \
                 given by --nodes or --inventory cannot be partitioned"
            );
            return ExitCode::from(2);
        }
        if let Some(why) = chordkv_harness::netns::unavailable() {
            eprintln!("error: partition faults need the local cluster in network namespaces, but {why}");
            return ExitCode::from(1);
        }
    }
    if workload.sweep.is_some() {
        return run_sweep(&args, workload);
    }
    // Kept alive until the run ends.
    let mut null_target = None;
    let mut nodes = args.nodes.clone();
    if args.ceiling {
        match loadgen::ceiling::NullTarget::start() {
            Ok(t) => {
                eprintln!("loadgen: ceiling run against the null target at {}", t.addr());
                nodes = Some(vec![t.addr()]);
                null_target = Some(t);
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(1);
            }
        }
        if !workload.faults.is_empty() {
            eprintln!(
                "loadgen: the ceiling run skips the workload's {} faults",
                workload.faults.len()
            );
            workload.faults.clear();
        }
        workload.name.push_str("-ceiling");
    }
    // A deployed cluster: faults go through deploy/cluster.sh (see loadgen::remote).
    let mut remote = None;
    if let Some(inventory) = &args.inventory {
        match RemoteCluster::for_run(inventory, nodes.as_deref()) {
            Ok((cluster, addrs)) => {
                nodes = Some(addrs);
                remote = Some(Box::new(cluster) as _);
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(1);
            }
        }
    }
    if args.nodes.is_some() && args.inventory.is_none() && !workload.faults.is_empty() {
        eprintln!("error: faults need a local cluster (no --nodes) or a deployed one (--inventory)");
        return ExitCode::from(2);
    }
    let opts = RunOptions {
        workload,
        nodes,
        out_dir: args.out,
        results_root: PathBuf::from(DEFAULT_RESULTS_DIR),
        chordkv_bin: args.chordkv,
        progress: !args.quiet,
    };
    let outcome = match run_with_control(opts, remote) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e:#}");
            return failure();
        }
    };
    drop(null_target);
    let s = &outcome.summary;
    let all = &s.ops["all"];
    println!(
        "{}: {:.0} ops/s ({} loop), p50 {} us, p99 {} us, p99.9 {} us, max {} us, errors {}, hops mean {:.2}",
        s.name,
        s.throughput_ops,
        s.r#loop,
        all.p50_us,
        all.p99_us,
        all.p999_us,
        all.max_us,
        s.errors.total,
        s.hops.mean
    );
    let v = &s.verify;
    println!(
        "verify: acknowledged {}, keys checked {}, reads checked {}, lost {}, stale reads {}, \
         resurrected {}, unexpected {}, recovered {}, unreadable {}",
        v.acknowledged,
        v.keys_checked,
        v.reads_checked,
        v.lost,
        v.stale_reads,
        v.resurrected,
        v.unexpected,
        v.recovered,
        v.unreadable
    );
    println!("results: {}", outcome.out_dir.display());
    eprintln!(
        "plots: {} {}",
        outcome.out_dir.join(loadgen::plot::LATENCY_SVG).display(),
        outcome.out_dir.join(loadgen::plot::TIMELINE_SVG).display()
    );
    for line in &v.anomalies {
        eprintln!("!!! {line}");
    }
    let mut failed = false;
    if v.lost > 0 {
        eprintln!("!!!!!!!! {} ACKNOWLEDGED WRITES LOST !!!!!!!!", v.lost);
        for line in &outcome.lost_keys {
            eprintln!("!!! lost {line}");
        }
        failed = true;
    }
    if v.stale_reads + v.resurrected > 0 {
        let policy = s
            .cluster
            .partition_policy
            .as_deref()
            .unwrap_or("unknown, judged as consistent");
        if s.cluster.promises_consistency() {
            eprintln!(
                "!!!!!!!! {} STALE READS, {} RESURRECTED DELETES (partition policy {policy}) !!!!!!!!",
                v.stale_reads, v.resurrected
            );
            failed = true;
        } else {
            eprintln!(
                "loadgen: {} stale reads and {} resurrected deletes, which {}",
                v.stale_reads,
                v.resurrected,
                s.cluster.why_stale_allowed()
            );
        }
    }
    if failed {
        return ExitCode::from(1);
    }
    if let Some(sig) = loadgen::interrupt::requested() {
        eprintln!(
            "loadgen: partial run, stopped by {} after {:.1} s measured",
            loadgen::interrupt::name(sig),
            s.measured_s
        );
        return ExitCode::from(loadgen::interrupt::exit_code(sig));
    }
    if v.unreadable > 0 {
        eprintln!(
            "!!! verification incomplete: {} written keys could not be read at the end",
            v.unreadable
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// A workload with `sweep:`: the data-loss experiment on fresh local clusters. Data loss is
/// what it measures, so it is not a failure; exit code 1 only when the sweep cannot run.
fn run_sweep(args: &Args, workload: Workload) -> ExitCode {
    if args.nodes.is_some() || args.inventory.is_some() {
        eprintln!("error: a sweep starts its own local clusters; drop --nodes and --inventory");
        return ExitCode::from(2);
    }
    let command = std::iter::once("loadgen".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let opts = SweepOptions {
        workload,
        out_dir: args.out.clone(),
        chordkv_bin: args.chordkv.clone(),
        command,
        progress: !args.quiet,
    };
    match sweep::run_sweep(opts) {
        Ok(outcome) => {
            print!("{}", outcome.table);
            println!("results: {}", outcome.out_dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            failure()
        }
    }
}

/// Exit code 1, or 128 + the signal when a Ctrl-C or SIGTERM stopped the run.
fn failure() -> ExitCode {
    match loadgen::interrupt::requested() {
        Some(sig) => ExitCode::from(loadgen::interrupt::exit_code(sig)),
        None => ExitCode::from(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--nodes` takes the names `chordkv --node` takes: HOST:PORT resolved, IP:PORT as is;
    /// a wrong entry (a trailing comma's empty one included) is named with the expected form.
    #[test]
    fn nodes_take_host_names_and_say_what_they_expect() {
        let args = Args::try_parse_from([
            "loadgen",
            "--workload",
            "w.yaml",
            "--nodes",
            "localhost:7000,127.0.0.1:7001",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let nodes = args.nodes.unwrap();
        assert_eq!(nodes.len(), 2);
        assert!(
            nodes[0].ip().is_loopback() && nodes[0].port() == 7000,
            "{nodes:?}"
        );
        assert_eq!(nodes[1], "127.0.0.1:7001".parse().unwrap());
        for bad in ["127.0.0.1:7000,", "localhost", "127.0.0.1:70000"] {
            let err = Args::try_parse_from(["loadgen", "--workload", "w.yaml", "--nodes", bad])
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"))
                .to_string();
            assert!(err.contains("expected IP:PORT or HOST:PORT"), "{bad}: {err}");
            if bad.ends_with(',') {
                assert!(err.contains("stray comma"), "{bad}: {err}");
            }
        }
    }
}
