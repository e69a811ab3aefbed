//! `chordkv`: run a node, run a local cluster, and talk to a ring from the shell.
//!
//! Every command is a thin layer over the library: `node` over [`server::run`], `cluster`
//! over [`cluster::LocalCluster`], and the client commands over [`client::Client`] and
//! [`client::walk_ring`].
//!
//! Exit status: 0 on success; 1 when a key is not found (`get`, `del`) or on any error (an
//! `error: ...` line on stderr); 2 on invalid usage (clap's message).

use std::ffi::OsString;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};

use chordkv_client::{self as client, Client, ClientError, RingReport};
use chordkv_core::chord::config::{DEFAULT_STABILIZE_INTERVAL_MS, DEFAULT_SUCCESSORS};
use chordkv_core::chord::Routing;
use chordkv_core::options::NodeOptions;
use chordkv_harness::cluster::{self, ClusterSpec, LocalCluster};
use chordkv_harness::sim::balance::{self, Allocation, BalanceConfig, BalanceRow, Movement, Spread};
use chordkv_harness::sim::lookup::{LookupSim, LookupSimConfig, Workload};
use chordkv_protocol::{Id, NodeAddr, NodeRef};
use chordkv_server::store;
use chordkv_server::{self as server, ServerConfig};
use logs::LogArgs;

mod logs;

mod top;

/// Default per-request timeout of the client commands, in milliseconds.
const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Default time `chordkv cluster` waits for a consistent ring, in milliseconds.
const DEFAULT_READY_TIMEOUT_MS: u64 = 60_000;
/// How often `chordkv cluster` checks for signals and dead nodes.
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(100);
/// Most nodes `chordkv ring` visits before it gives up on returning to the first.
const RING_WALK_MAX_NODES: usize = 1 << 20;

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  the key was not found (get, del), or an error (an `error: ...` line on stderr)
  2  invalid usage";

/// chordkv: a distributed key-value store on a Chord ring.
///
/// Start a ring with `chordkv cluster --nodes 3` (local processes) or with `chordkv node` on
/// each host, then read and write keys through any node with `put`, `get` and `del`, and
/// inspect it with `ring`, `stats` and `top`.
#[derive(Debug, Parser)]
#[command(name = "chordkv", version, after_help = EXIT_STATUS_HELP)]
struct Cli {
    /// Timeout of each connection attempt and each request of the client commands, in
    /// milliseconds.
    #[arg(
        long,
        global = true,
        value_name = "MS",
        default_value_t = DEFAULT_TIMEOUT_MS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    timeout_ms: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node of a ring
    ///
    /// The node serves its range of keys and takes part in the ring until SIGTERM or SIGINT;
    /// then it hands its keys to its successor, leaves, and exits 0. Exits 1 if it cannot
    /// start (e.g. the address is in use).
    Node(NodeArgs),
    /// Run a ring of local nodes until interrupted
    ///
    /// Starts N `chordkv node` child processes on this machine (the first creates the ring,
    /// the others join it), waits until the ring is consistent, prints one line
    /// `ready: ADDR ADDR ...` (node 0 first) on stdout, and keeps running. A node that dies is
    /// reported on stderr. On SIGINT or SIGTERM it stops the nodes one after another (each
    /// leaves gracefully) and exits 0. Exits 1 if the ring does not become consistent in time.
    /// With --resp, a line `resp: ADDR ADDR ...` (each node's Redis-protocol address, node 0
    /// first) comes just before the ready line.
    Cluster(ClusterArgs),
    /// Store VALUE under KEY
    ///
    /// Prints `ok` once the key's owner has applied the write.
    Put {
        /// The key (its bytes as given).
        key: OsString,
        /// The value (its bytes as given).
        #[arg(allow_hyphen_values = true)]
        value: OsString,
        #[command(flatten)]
        target: Target,
    },
    /// Print the value of KEY
    ///
    /// Prints the value's bytes followed by a newline. When the key does not exist, prints
    /// `not found` on stderr and exits 1.
    Get {
        /// The key.
        key: OsString,
        #[command(flatten)]
        target: Target,
    },
    /// Delete KEY
    ///
    /// Prints `deleted`. When the key did not exist, prints `not found` on stderr and exits 1
    /// (like `get`, so that scripts can tell); the delete is applied either way.
    Del {
        /// The key.
        key: OsString,
        #[command(flatten)]
        target: Target,
    },
    /// Show the ring and check that it is consistent
    ///
    /// Walks the ring from a node along successor pointers and prints a row per node (id
    /// prefix, address, predecessor, successor, key count, status) in ring order, then
    /// `consistent: yes|no` and a `problem: ...` line per problem found. The ring is
    /// consistent when the walk returns to its first node, every node's successor names it as
    /// predecessor, every successor list is the positions that follow its node in ring order
    /// (up to one host more than the lists name), every node answers and is active, and ids
    /// increase around the ring. A node
    /// alone is a ring of one when it names no other node and serves every key (one probe
    /// key is read from it).
    /// Exits 0 whether or not the ring is consistent (read the verdict); 1 only when the
    /// starting node cannot be asked.
    Ring {
        #[command(flatten)]
        target: Target,
        /// Print one JSON object: {"consistent", "down", "nodes": [{"id", "addr", "predecessor",
        /// "successor", "successors" (the whole list), "keys", "status"}], "problems", "hosts":
        /// [{"host", "vnodes", "share" (0 to 1), "keys"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Print a node's counters and gauges
    ///
    /// One `name value` line per counter, in the node's order. The client latency histogram
    /// (`latency_le_us.<bound>` cumulative buckets, which --json and `chordkv top` read) is
    /// shown as `latency_p50_us` and `latency_p99_us`: since the node started, interpolated
    /// within the buckets as Prometheus' histogram_quantile does.
    Stats {
        #[command(flatten)]
        target: Target,
        /// Print one JSON object mapping each name to its value, plus `cache_hit_rate` and
        /// `maintenance_per_s` (routing maintenance requests per second of uptime).
        #[arg(long)]
        json: bool,
    },
    #[command(about = top::ABOUT, long_about = top::LONG_ABOUT)]
    Top(top::TopArgs),
    /// Declare a node gone for good (it left the membership without handing over)
    ///
    /// Under the partition policy `consistent` a node that stops answering stays a member of
    /// the ring: the ranges whose preference lists it is in keep needing a majority that
    /// counts it, so a ring that lost a majority of some ranges for ever serves them again only
    /// once the dead nodes are forgotten. The node at --node drops DEAD_ADDR from its lists and
    /// passes the notice around the ring; the ranges it held are served by the next members
    /// (from their copies: what only the dead node held is lost). Under `available` it ends the
    /// probing of the node and lets tombstones its ranges held back be collected. A forgotten
    /// node that comes back joins as a new member; restart it with an empty store. Under
    /// `consistent` an address no node lists, up or down, is refused (exit 1): it is not a
    /// member, or was forgotten already.
    ///
    /// With virtual nodes (--vnodes), IP:PORT forgets the whole process: every ring position
    /// it ran; IP:PORT#I forgets its position (vnode) I only, as `chordkv ring` lists it.
    Forget {
        #[command(flatten)]
        target: Target,
        /// The node to forget, as the ring knows it: IP:PORT (the host: every position it
        /// ran) or IP:PORT#I (its vnode I only).
        #[arg(value_name = "DEAD_ADDR")]
        dead: String,
        /// The ring's keyring, when the ring runs with one: FORGET is a peer operation, sent
        /// over a connection authenticated with the keyring's first key.
        #[arg(long, value_name = "FILE")]
        keyring: Option<PathBuf>,
    },
    /// Print a new random ring key for a --keyring file
    ///
    /// One line of standard base64 (32 bytes from the OS random source). A keyring file holds
    /// one such line per key; give every node of a ring the same file (mode 0600).
    Keygen,
    /// Simulate lookups on a ring of N nodes (no network: the real node state machines on a
    /// simulated one)
    ///
    /// Builds the ring from the oracle (as the Chord paper's simulator does), measures routing
    /// maintenance traffic, crashes --fail-fraction of the nodes at once, then runs --lookups
    /// client GETs from random live nodes, routed exactly as a node routes client operations.
    /// Prints mean, p1, p50, p99 hops, the failed-lookup fraction, routing state per node and
    /// maintenance messages per node per second. A hop is one message to another node on the
    /// way to the owner (0 when the entry owns the key); a lookup fails unless the key's owner
    /// before the crashes serves it (SIGCOMM'01 section 6.4).
    ///
    /// With --vnodes V > 1 each of the N nodes is a host running V virtual nodes (SIGCOMM'01
    /// section 6.9), at --allocation positions: hops count network hops only (a host delivers
    /// messages between its vnodes itself), crashes take whole hosts, lookups enter at a random
    /// live host, and routing state and maintenance messages are reported per host, the
    /// latter both as sent over the network and as counted by the vnodes.
    Sim(SimArgs),
    /// Keys per host on a simulated ring (Chord section 6.2 Figs. 8-9), with random virtual
    /// nodes or balanced positions
    ///
    /// Places --keys random keys (ids drawn from --seed) on a ring of --hosts hosts, each with
    /// V positions: random ones (Chord section 6.9's virtual nodes: position 0 is the host's
    /// node id, position i the SHA-1 of "ADDR#i"), or balanced ones, chosen as the hosts join
    /// one after the other to even out their shares of the ring and what they store counting
    /// --replicas copies. Prints, per allocation and V,
    /// keys per host (mean, 1st, 50th and 99th percentiles, max, and each over the mean),
    /// each host's share of the id space over the mean share (keys per host without the
    /// sampling noise of a finite number of keys) and its copies over the mean (the ids it
    /// holds a copy of with --replicas replicas on distinct hosts); then what one join moves (8 hosts, a 9th
    /// added: the fraction of the id space and of the keys that changed host, and from how
    /// many hosts) and one leave (host 0 of the 9 removed: to how many hosts its keys went).
    /// No node runs: a ring is its positions.
    Balance(BalanceArgs),
}

/// Where `chordkv sim`'s hosts put their vnodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SimAllocationArg {
    /// Chord's virtual nodes: vnode 0 at the SHA-1 of the address, vnode i at that of "ADDR#i".
    Random,
    /// Positions chosen as the hosts join in index order, to even out their shares.
    Balanced,
}

/// Which allocations `chordkv balance` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum AllocationArg {
    Random,
    Balanced,
    Both,
}

#[derive(Debug, Args)]
struct BalanceArgs {
    /// Hosts (physical nodes) on the ring.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..(1 << 24))
    )]
    hosts: u64,
    /// Keys placed on the ring.
    #[arg(
        long,
        value_name = "K",
        default_value_t = 500_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    keys: u64,
    /// Positions per host to measure, comma-separated [default: 1,2,5,10,20 for random
    /// (the Chord paper's Fig. 9), 1,2,4,8,16 for balanced].
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    vnodes: Vec<u16>,
    /// Which positions: random (Chord's virtual nodes), balanced, or both.
    #[arg(long, value_name = "A", value_enum, default_value_t = AllocationArg::Both)]
    allocation: AllocationArg,
    /// Seed of the key ids; the same seed gives the same numbers.
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Copies beyond the primary (a node's --replicas): balanced positions even out what each
    /// host stores counting them, and the "copies" columns measure it.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2,
        value_parser = clap::value_parser!(u64).range(0..64)
    )]
    replicas: u64,
    /// Hosts on the ring before the join of the movement measure.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 8,
        value_parser = clap::value_parser!(u64).range(1..4096)
    )]
    movement_hosts: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct SimArgs {
    /// Nodes in the ring (hosts, with --vnodes).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..(1 << 24)))]
    nodes: u64,
    /// Virtual nodes (ring positions) per host.
    #[arg(
        long,
        value_name = "V",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    vnodes: u16,
    /// Where each host's positions go: random (Chord's virtual nodes) or balanced.
    #[arg(long, value_name = "A", value_enum, default_value_t = SimAllocationArg::Random)]
    allocation: SimAllocationArg,
    /// Routing scheme: classic, base:B or onehop.
    #[arg(long, value_name = "SCHEME", default_value = "classic")]
    routing: Routing,
    /// Entries of each node's location cache (0: no cache).
    #[arg(long, value_name = "ENTRIES", default_value_t = 0)]
    cache: usize,
    /// Length of each node's successor list (Chord's r).
    #[arg(
        long,
        value_name = "R",
        default_value_t = DEFAULT_SUCCESSORS as u64,
        value_parser = clap::value_parser!(u64).range(1..=1024)
    )]
    successors: u64,
    /// Lookups to run.
    #[arg(long, value_name = "L", default_value_t = 10_000)]
    lookups: u64,
    /// Key choice: uniform, zipfian (YCSB, theta 0.99) or hotkey (every lookup on one key).
    #[arg(long, value_name = "W", default_value = "uniform")]
    workload: Workload,
    /// Distinct keys [default: 100 per node, as in the Chord paper].
    #[arg(long, value_name = "K")]
    keys: Option<u64>,
    /// Fraction of the nodes that crash at once before the lookups (0 to 1).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    fail_fraction: f64,
    /// Seed of every random choice; the same seed gives the same numbers.
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// The nodes' stabilize period in simulated milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = DEFAULT_STABILIZE_INTERVAL_MS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    stabilize_ms: u64,
    /// Simulated milliseconds of maintenance measured before the lookups.
    #[arg(long, value_name = "MS", default_value_t = 1_000)]
    maintenance_ms: u64,
    /// Most lookups in flight at once [default: one per node].
    #[arg(long, value_name = "C", default_value_t = 0)]
    concurrency: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The node a client command talks to.
#[derive(Debug, Args)]
struct Target {
    /// Address of any node of the ring (IP:PORT or HOST:PORT), e.g. 127.0.0.1:7000.
    #[arg(long, value_name = "ADDR")]
    node: String,
    /// The user to log in as when the ring requires credentials (--requirepass: `default`).
    #[arg(long, value_name = "NAME", default_value = "default")]
    user: String,
    /// The password to log in with, when the ring requires one; the environment variable
    /// CHORDKV_PASSWORD is used when this is not given (it keeps the password out of `ps`).
    #[arg(long, value_name = "PASSWORD")]
    password: Option<String>,
    /// Reach the node over TLS (a node started with --tls-cert). Needs --tls-ca.
    #[arg(long, requires = "tls_ca")]
    tls: bool,
    /// With --tls: the CA certificates (PEM) the node's certificate is checked against.
    #[arg(long, value_name = "FILE", requires = "tls")]
    tls_ca: Option<PathBuf>,
    /// With --tls: a client certificate to offer (PEM), for a node started with --tls-ca.
    #[arg(long, value_name = "FILE", requires = "tls_key", requires = "tls")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// With --tls: the name the node's certificate carries [default: the node's IP address].
    #[arg(long, value_name = "NAME", requires = "tls")]
    tls_server_name: Option<String>,
}

impl Target {
    /// How to reach the node: credentials and TLS, as given.
    fn access(&self) -> anyhow::Result<client::Access> {
        let tls = match (&self.tls, &self.tls_ca) {
            (true, Some(ca)) => {
                let identity = match (&self.tls_cert, &self.tls_key) {
                    (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                    _ => None,
                };
                Some(
                    client::TlsClient::from_files(ca, identity, self.tls_server_name.as_deref())
                        .map_err(|e| anyhow!("--tls: {e}"))?,
                )
            }
            _ => None,
        };
        Ok(client::Access {
            login: self.credentials(),
            tls,
        })
    }

    /// The credentials given, if any: `--password`, else `$CHORDKV_PASSWORD`.
    fn credentials(&self) -> Option<client::Credentials> {
        let password = self
            .password
            .clone()
            .or_else(|| std::env::var("CHORDKV_PASSWORD").ok())?;
        Some(client::Credentials {
            user: self.user.clone(),
            password: password.into_bytes().into(),
        })
    }
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// Address to listen on (IP:PORT).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Address other nodes and clients use to reach this node [default: the --listen
    /// address]. The node's ring id is the SHA-1 of this address unless --id is given.
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
    /// Address of a node of an existing ring to join; without it the node starts a new ring.
    /// Several, comma-separated, are tried in turn until one answers.
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',')]
    join: Vec<String>,
    /// The node's ring id as 40 hex digits, instead of the hash of its address.
    #[arg(long, value_name = "HEX40")]
    id: Option<String>,
    #[command(flatten)]
    options: NodeOptions,
    /// Also serve Redis clients (RESP2: GET, SET, DEL, EXISTS, MGET, MSET, PING, INFO, ...) on
    /// this address (IP:PORT; port 0 picks a free one, printed on stderr). Their requests are
    /// routed through the ring like any other.
    #[arg(long, value_name = "ADDR")]
    resp: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (IP:PORT; port 0 picks a free one,
    /// printed on stderr): requests by command and result, latency histograms, keys, hops,
    /// connections, anti-entropy, leases, per-peer failures and every `chordkv stats`
    /// counter. Bind it to an address only your monitoring can reach: it has no
    /// authentication.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    #[command(flatten)]
    logs: LogArgs,
}

#[derive(Debug, Args)]
struct ClusterArgs {
    /// Number of nodes.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 3,
        value_parser = clap::value_parser!(u64).range(1..=1000)
    )]
    nodes: u64,
    /// Node i listens on port P + i [default: free ports picked at random].
    #[arg(long, value_name = "P")]
    base_port: Option<u16>,
    /// Address every node listens on.
    #[arg(long, value_name = "IP", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// Every node's options (the same flags and defaults as `chordkv node`).
    #[command(flatten)]
    options: NodeOptions,
    /// Give every node a Redis-protocol (RESP) listener on a free port; their addresses are
    /// printed as one line `resp: ADDR ADDR ...` (node 0 first) just before the ready line.
    #[arg(long)]
    resp: bool,
    /// Like --resp, with node i's RESP listener on port P + i.
    #[arg(long, value_name = "P")]
    resp_base_port: Option<u16>,
    /// Give node i a Prometheus /metrics listener (`chordkv node --metrics`) on --host, port
    /// P + i; their addresses are printed as one line `metrics: ADDR ADDR ...` (node 0 first)
    /// just before the ready line. Scrape them as `deploy/cluster.sh` inventories do.
    #[arg(long, value_name = "P")]
    metrics_base_port: Option<u16>,
    /// Write each node's output to DIR/node-INDEX-PORT.log instead of this terminal.
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Node i keeps its keys in the (i mod N)-th of these N stores instead of --store: e.g.
    /// 8 nodes over the 3 redis-servers a twemproxy in front of them would use.
    #[arg(long, value_name = "URL", num_args = 1.., conflicts_with = "store")]
    stores: Vec<String>,
    /// The log flags, passed to every node; the launcher's own lines follow them too.
    #[command(flatten)]
    logs: LogArgs,
    /// How long to wait for the ring to become consistent before giving up, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = DEFAULT_READY_TIMEOUT_MS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    ready_timeout_ms: u64,
}

/// The /metrics address of each of `nodes` nodes, `host:base+i`; none without a base. Fails
/// when the last port is beyond 65535.
fn metrics_addrs(host: IpAddr, base: Option<u16>, nodes: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let Some(base) = base else {
        return Ok(Vec::new());
    };
    (0..nodes)
        .map(|i| {
            u16::try_from(i)
                .ok()
                .and_then(|i| base.checked_add(i))
                .map(|port| SocketAddr::new(host, port))
                .ok_or_else(|| anyhow!("--metrics-base-port {base}: port {base} + {i} is beyond 65535"))
        })
        .collect()
}

/// How a command ended when it did not fail.
enum Outcome {
    Success,
    NotFound,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let timeout = Duration::from_millis(cli.timeout_ms);
    let result = match cli.command {
        Command::Node(args) => run_node(args),
        Command::Cluster(args) => run_cluster(args),
        Command::Put { key, value, target } => cmd_put(&target, key, value, timeout),
        Command::Get { key, target } => cmd_get(&target, key, timeout),
        Command::Del { key, target } => cmd_del(&target, key, timeout),
        Command::Ring { target, json } => cmd_ring(&target, json, timeout),
        Command::Stats { target, json } => cmd_stats(&target, json, timeout),
        Command::Top(args) => top::run(args),
        Command::Forget {
            target,
            dead,
            keyring,
        } => cmd_forget(&target, &dead, keyring.as_deref(), timeout),
        Command::Keygen => {
            println!("{}", server::keyring::generate_key());
            Ok(Outcome::Success)
        }
        Command::Sim(args) => cmd_sim(args),
        Command::Balance(args) => cmd_balance(args),
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::NotFound) => {
            eprintln!("not found");
            ExitCode::FAILURE
        }
        // `chordkv ring | head -1`: the reader is gone, which is no error of ours.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, stopping at a [`ClientError`], whose message
/// already says what its cause was.
fn describe(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        parts.push(cause.to_string());
        if cause.is::<ClientError>() {
            break;
        }
    }
    parts.join(": ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// Parses `IP:PORT`, or resolves `HOST:PORT` (preferring IPv4): [`client::resolve_addr`].
fn parse_addr(s: &str) -> anyhow::Result<SocketAddr> {
    client::resolve_addr(s).map_err(|e| anyhow!(e))
}

fn connect(target: &Target, timeout: Duration) -> anyhow::Result<Client> {
    let addr = parse_addr(&target.node)?;
    Ok(Client::connect_as(addr, timeout, &target.access()?)?)
}

// --- node and cluster --------------------------------------------------------------------

fn run_node(args: NodeArgs) -> anyhow::Result<Outcome> {
    args.logs.init()?;
    let listen = parse_addr(&args.listen)?;
    let advertise = args.advertise.as_deref().map(parse_addr).transpose()?;
    let join = args
        .join
        .iter()
        .map(|a| parse_addr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let resp = args.resp.as_deref().map(parse_addr).transpose()?;
    let metrics = args.metrics.as_deref().map(parse_addr).transpose()?;
    let node_id = match &args.id {
        Some(hex) => {
            Some(Id::from_hex(hex).ok_or_else(|| anyhow!("invalid id '{hex}': expected 40 hex digits"))?)
        }
        None => None,
    };
    let reachable = advertise.unwrap_or(listen);
    if reachable.ip().is_unspecified() || reachable.port() == 0 {
        bail!(
            "other nodes cannot reach {reachable}: give --advertise with the address and port \
             they should use"
        );
    }
    let chord = args.options.chord_config().map_err(|e| anyhow!(e))?;
    let vnodes = args.options.vnodes as u16;
    if node_id.is_some() && vnodes > 1 {
        bail!(
            "--id names one ring position, and this node runs {vnodes} (--vnodes, default {}): \
             give --vnodes 1 with --id",
            chordkv_core::options::DEFAULT_VNODES
        );
    }
    // Each vnode's keys are namespaced by its address (`ip:port`, then `ip:port#i` for vnode
    // i > 0).
    let namespaces: Vec<String> = (0..vnodes)
        .map(|v| NodeAddr::new(reachable, v).to_string())
        .collect();
    let store::Partitions {
        stores,
        batch: store_batch,
    } = store::open_partitions(&args.options.store, &namespaces)?;
    let keyring_path = args.options.keyring.as_ref().map(PathBuf::from);
    let keyring = match &keyring_path {
        Some(path) => Some(server::keyring::Keyring::load(path)?),
        None => None,
    };
    // The node's span before the server enters its own: the choice of positions is its work.
    let span = tracing::error_span!("node", addr = %reachable, vnodes).entered();
    let vnode_ids = match node_id {
        Some(id) => vec![id],
        None => {
            let timeout = Duration::from_millis(chord.rpc_timeout_ms.max(1_000));
            let chosen = server::positions::choose(
                reachable,
                vnodes,
                chord.replicas,
                &join,
                &stores,
                keyring.as_ref(),
                timeout,
            );
            if vnodes > 1 && chosen.how.starts_with("random") {
                tracing::warn!("positions {}", chosen.how);
            } else if vnodes > 1 {
                tracing::info!("positions {}", chosen.how);
            }
            chosen.ids
        }
    };
    drop(span);
    server::run(ServerConfig {
        listen,
        advertise,
        join,
        vnode_ids,
        chord,
        stores,
        store_batch,
        store_threads: args.options.store_threads as usize,
        resp,
        peer_security: server::PeerSecurity {
            keyring,
            keyring_path,
            verify_incoming: args.options.keyring_verify_incoming,
            verify_outgoing: args.options.keyring_verify_outgoing,
        },
        tls: match (&args.options.tls_cert, &args.options.tls_key) {
            (Some(cert), Some(key)) => Some(server::tls::server_config(
                std::path::Path::new(cert),
                std::path::Path::new(key),
                args.options.tls_ca.as_deref().map(std::path::Path::new),
            )?),
            _ => None,
        },
        client_auth: server::ClientAuth {
            users: client_users(&args.options)?,
            protected_mode: args.options.protected_mode.is_yes(),
        },
        client_limits: server::ClientLimits {
            max_clients: args.options.max_clients as usize,
            query_buffer_bytes: args.options.client_query_buffer_limit as usize,
            idle_timeout_ms: args.options.idle_timeout_secs.saturating_mul(1000),
        },
        metrics,
    })?;
    Ok(Outcome::Success)
}

fn run_cluster(args: ClusterArgs) -> anyhow::Result<Outcome> {
    args.logs.init()?;
    // Registered before the first node starts, so that no signal is lost.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("cannot install a signal handler")?;
    }

    let mut spec = ClusterSpec::new(
        std::env::current_exe().context("cannot find the chordkv binary")?,
        args.nodes as usize,
    );
    spec.base_port = args.base_port;
    spec.host = args.host;
    // Refused here, before any node starts, with the words the node would use.
    args.options.chord_config().map_err(|e| anyhow!(e))?;
    spec.node_args = args.options.to_args();
    spec.node_args.extend(args.logs.to_args());
    if !args.stores.is_empty() {
        if let Some(i) = spec.node_args.iter().position(|a| a == "--store") {
            spec.node_args.drain(i..i + 2);
        }
        spec.per_node_args = (0..spec.nodes)
            .map(|i| vec!["--store".to_string(), args.stores[i % args.stores.len()].clone()])
            .collect();
    }
    let metrics = metrics_addrs(args.host, args.metrics_base_port, spec.nodes)?;
    if !metrics.is_empty() {
        spec.per_node_args.resize(spec.nodes, Vec::new());
        for (args, addr) in spec.per_node_args.iter_mut().zip(&metrics) {
            args.extend(["--metrics".to_string(), addr.to_string()]);
        }
    }
    if args.options.users.is_some() && args.options.requirepass.is_none() {
        bail!(
            "chordkv cluster with --users needs --requirepass too: the launcher checks on the ring \
             as the default user"
        );
    }
    spec.access.login = args.options.requirepass.as_ref().map(|p| client::Credentials {
        user: "default".into(),
        password: p.clone().into_bytes().into(),
    });
    spec.resp = args.resp || args.resp_base_port.is_some();
    spec.resp_base_port = args.resp_base_port;
    spec.log_dir = args.log_dir;
    spec.inherit_stderr = true;
    // Ctrl-C reaches only us; we then stop the nodes one by one.
    spec.own_process_group = true;

    let mut cluster = LocalCluster::start(spec)?;
    let ready = if stop.load(Ordering::Relaxed) {
        Err(anyhow!("interrupted before the ring was ready"))
    } else {
        cluster
            .wait_consistent_or_cancel(Duration::from_millis(args.ready_timeout_ms), &stop)
            .map(|_| ())
            .map_err(anyhow::Error::from)
    };
    if let Err(e) = ready {
        stop_cluster(&mut cluster);
        return Err(e);
    }

    let addrs: Vec<String> = cluster.addrs().iter().map(|a| a.to_string()).collect();
    {
        let mut out = io::stdout().lock();
        let resp: Vec<String> = cluster.resp_addrs().iter().map(|a| a.to_string()).collect();
        // Before the ready line, so that a reader waiting for `ready:` has it already.
        let resp_line = if resp.is_empty() {
            String::new()
        } else {
            format!("resp: {}\n", resp.join(" "))
        };
        let metrics_line = if metrics.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = metrics.iter().map(|a| a.to_string()).collect();
            format!("metrics: {}\n", list.join(" "))
        };
        // A reader that went away does not stop the cluster.
        let _ =
            writeln!(out, "{resp_line}{metrics_line}ready: {}", addrs.join(" ")).and_then(|()| out.flush());
    }
    tracing::info!(
        "chordkv cluster: {} node{} ready; stop with Ctrl-C or SIGTERM",
        addrs.len(),
        if addrs.len() == 1 { "" } else { "s" }
    );

    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(SUPERVISE_INTERVAL);
        for (i, status) in cluster.poll_exits() {
            tracing::warn!(
                "chordkv cluster: node {i} ({}) exited unexpectedly: {status}",
                cluster.addr(i)
            );
        }
    }
    tracing::info!("chordkv cluster: stopping the nodes");
    stop_cluster(&mut cluster);
    Ok(Outcome::Success)
}

/// Stops every node gracefully, saying on stderr which ones did not leave cleanly.
fn stop_cluster(cluster: &mut LocalCluster) {
    let stop_timeout = cluster.spec().stop_timeout;
    for (i, how) in cluster.stop_all() {
        let addr = cluster.addr(i);
        match how {
            cluster::Stopped::Exited(status) if !status.success() => {
                tracing::warn!("chordkv cluster: node {i} ({addr}) exited with {status}")
            }
            cluster::Stopped::Killed => tracing::warn!(
                "chordkv cluster: node {i} ({addr}) did not leave within {:.1} s and was killed",
                stop_timeout.as_secs_f64()
            ),
            _ => {}
        }
    }
}

// --- client commands ---------------------------------------------------------------------

fn cmd_put(target: &Target, key: OsString, value: OsString, timeout: Duration) -> anyhow::Result<Outcome> {
    let mut client = connect(target, timeout)?;
    client.put(key.into_vec(), value.into_vec())?;
    writeln!(io::stdout().lock(), "ok")?;
    Ok(Outcome::Success)
}

fn cmd_get(target: &Target, key: OsString, timeout: Duration) -> anyhow::Result<Outcome> {
    let mut client = connect(target, timeout)?;
    let Some(value) = client.get(key.into_vec())?.value else {
        return Ok(Outcome::NotFound);
    };
    let mut out = io::stdout().lock();
    out.write_all(&value)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(Outcome::Success)
}

fn cmd_del(target: &Target, key: OsString, timeout: Duration) -> anyhow::Result<Outcome> {
    let mut client = connect(target, timeout)?;
    if !client.delete(key.into_vec())?.existed {
        return Ok(Outcome::NotFound);
    }
    writeln!(io::stdout().lock(), "deleted")?;
    Ok(Outcome::Success)
}

fn cmd_ring(target: &Target, json: bool, timeout: Duration) -> anyhow::Result<Outcome> {
    let start = parse_addr(&target.node)?;
    let report = client::walk_ring_as(start, timeout, RING_WALK_MAX_NODES, &target.access()?)?;
    let mut out = io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        out.write_all(ring_table(&report).as_bytes())?;
    }
    out.flush()?;
    Ok(Outcome::Success)
}

/// The human-readable form of a ring report: a table, the verdict, the problems.
fn ring_table(report: &RingReport) -> String {
    let dash = || "-".to_string();
    let mut rows = vec![[
        "ID".to_string(),
        "ADDRESS".to_string(),
        "PREDECESSOR".to_string(),
        "SUCCESSOR".to_string(),
        "KEYS".to_string(),
        "STATUS".to_string(),
    ]];
    for n in &report.nodes {
        rows.push([
            n.id.short(12),
            n.addr.to_string(),
            n.predecessor.map_or_else(dash, |a| a.to_string()),
            n.successor.map_or_else(dash, |a| a.to_string()),
            n.keys.to_string(),
            client::status_name(n.status).to_string(),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut text = String::new();
    for row in &rows {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {:>w4$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        );
        text.push_str(line.trim_end());
        text.push('\n');
    }
    if report.hosts.iter().any(|h| h.vnodes > 1) {
        for h in &report.hosts {
            text.push_str(&format!(
                "host: {} {} vnodes, {:.2}% of the ring, {} keys\n",
                h.host,
                h.vnodes,
                h.share * 100.0,
                h.keys
            ));
        }
    }
    for addr in &report.down {
        text.push_str(&format!(
            "down: {addr} (a member that does not answer; still in the ring until it returns or \
             is forgotten with `chordkv forget`)\n"
        ));
    }
    let verdict = if report.consistent { "yes" } else { "no" };
    text.push_str(&format!("consistent: {verdict}\n"));
    for problem in &report.problems {
        text.push_str(&format!("problem: {problem}\n"));
    }
    text
}

fn cmd_forget(
    target: &Target,
    dead: &str,
    keyring: Option<&std::path::Path>,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    // `ip:port` is the host, every position it ran; `ip:port#i` its vnode i only.
    let (host, vnode) = match dead.rsplit_once('#') {
        Some((host, i)) => {
            let i = i.parse::<u16>().map_err(|_| {
                anyhow!("invalid address '{dead}': expected IP:PORT or IP:PORT#VNODE, e.g. 127.0.0.1:7000#3")
            })?;
            (parse_addr(host)?, Some(i))
        }
        None => (parse_addr(dead)?, None),
    };
    let addr = NodeAddr::new(host, vnode.unwrap_or(0));
    let mut client = connect(target, timeout)?;
    // The ring knows a position by its id: ask the node for the one it knows (a node that
    // knows the position itself uses its own; this is only a hint).
    let listed = client.member_at(addr)?;
    let what = match vnode {
        None => format!("{host} (every position of the host)"),
        Some(_) => addr.to_string(),
    };
    if listed.is_none() && client.info()?.keeps_down_members {
        // Under `consistent` every member, up or down, stays in its predecessors' successor
        // lists: one that no node lists is not a member (a mistyped address, or one forgotten
        // already). Elsewhere the node may only be remembered as departed, which no list
        // shows: the notice is sent.
        let report = client::walk_ring_as(client.addr(), timeout, RING_WALK_MAX_NODES, &target.access()?)?;
        let known = (report.nodes.iter().map(|n| n.addr))
            .chain(report.down.iter().copied())
            .any(|a| {
                if vnode.is_some() {
                    a == addr
                } else {
                    a.host == host
                }
            });
        if !known {
            bail!(
                "no node of the ring lists {what}, up or down: not a member (a mistyped address, \
                 or one forgotten already); nothing was forgotten"
            );
        }
    }
    let node = listed.unwrap_or_else(|| NodeRef::guess(addr));
    let forgotten = match (keyring, vnode) {
        (None, None) => client.forget_host(node)?,
        (None, Some(_)) => client.forget(node)?,
        (Some(path), _) => forget_as_peer(client.addr(), path, node, vnode.is_none(), timeout)?,
    };
    let mut out = io::stdout().lock();
    if forgotten {
        writeln!(out, "forgotten: {what}")?;
    } else {
        writeln!(out, "already forgotten: {what}")?;
    }
    out.flush()?;
    Ok(Outcome::Success)
}

/// The users `--users` and `--requirepass` name, if any.
fn client_users(options: &NodeOptions) -> anyhow::Result<Option<Arc<server::auth::Users>>> {
    let users = match (&options.users, &options.requirepass) {
        (None, None) => return Ok(None),
        (Some(path), pass) => {
            let users = server::auth::Users::load(std::path::Path::new(path))?;
            match pass {
                Some(p) => users.with_requirepass(p),
                None => users,
            }
        }
        (None, Some(pass)) => server::auth::Users::requirepass(pass),
    };
    Ok(Some(Arc::new(users)))
}

/// Sends FORGET over a connection authenticated with the ring's key (a peer operation).
fn forget_as_peer(
    addr: SocketAddr,
    keyring: &std::path::Path,
    node: NodeRef,
    whole_host: bool,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let keyring = server::keyring::Keyring::load(keyring)?;
    let mut channel = server::secure::connect_blocking(addr, &keyring)
        .with_context(|| format!("cannot open an authenticated connection to {addr}"))?;
    channel.stream.set_read_timeout(Some(timeout))?;
    let frame = chordkv_protocol::Frame::new(1, chordkv_protocol::Message::Forget { node, whole_host });
    channel.send(&frame.to_bytes()?)?;
    match channel.recv_frame()?.message {
        chordkv_protocol::Message::ForgetReply { forgotten } => Ok(forgotten),
        chordkv_protocol::Message::Error { text, .. } => bail!("{addr}: {text}"),
        other => bail!("{addr} answered FORGET with {}", other.name()),
    }
}

fn cmd_stats(target: &Target, json: bool, timeout: Duration) -> anyhow::Result<Outcome> {
    let counters = connect(target, timeout)?.stats()?;
    let mut out = io::stdout().lock();
    if json {
        let get = |name: &str| counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v as f64);
        let hit_rate = match (get("cache_hits"), get("cache_misses")) {
            (Some(h), Some(m)) if h + m > 0.0 => h / (h + m),
            _ => 0.0,
        };
        let maintenance_per_s = match (get("maintenance_sent"), get("uptime_ms")) {
            (Some(sent), Some(ms)) if ms > 0.0 => sent / (ms / 1000.0),
            _ => 0.0,
        };
        let mut object: serde_json::Map<String, serde_json::Value> = counters
            .into_iter()
            .map(|(name, value)| (name, value.into()))
            .collect();
        object.insert("cache_hit_rate".into(), hit_rate.into());
        object.insert("maintenance_per_s".into(), maintenance_per_s.into());
        writeln!(out, "{}", serde_json::Value::Object(object))?;
    } else {
        // The latency buckets (for `top` and --json) read as two lines: the median and the
        // 99th percentile since the node started.
        let bucket = chordkv_server::latency::BUCKET_PREFIX;
        for (name, value) in counters.iter().filter(|(n, _)| !n.starts_with(bucket)) {
            writeln!(out, "{name} {value}")?;
        }
        let latency = top::Counters::from_stats(&counters).latency;
        let since_start: Vec<(f64, u64)> = latency.iter().map(|&(bound, _)| (bound, 0)).collect();
        for (name, q) in [("latency_p50_us", 0.5), ("latency_p99_us", 0.99)] {
            if let Some(us) = top::quantile_us(q, &since_start, &latency) {
                writeln!(out, "{name} {us:.0}")?;
            }
        }
    }
    out.flush()?;
    Ok(Outcome::Success)
}

// --- simulator ---------------------------------------------------------------------------

fn cmd_sim(args: SimArgs) -> anyhow::Result<Outcome> {
    if !(0.0..=1.0).contains(&args.fail_fraction) {
        bail!("--fail-fraction {} is not between 0 and 1", args.fail_fraction);
    }
    let config = LookupSimConfig {
        nodes: args.nodes as usize,
        vnodes: args.vnodes,
        allocation: match args.allocation {
            SimAllocationArg::Random => Allocation::Random,
            SimAllocationArg::Balanced => Allocation::Balanced,
        },
        routing: args.routing,
        cache_entries: args.cache,
        successors: args.successors as usize,
        lookups: args.lookups,
        workload: args.workload,
        keys: args.keys.unwrap_or(0),
        fail_fraction: args.fail_fraction,
        seed: args.seed,
        stabilize_ms: args.stabilize_ms,
        maintenance_ms: args.maintenance_ms,
        concurrency: args.concurrency as usize,
        ..LookupSimConfig::default()
    };
    // One random position per host is the simulator without virtual nodes, which prints as
    // it always has.
    let hosts = config.vnodes > 1 || config.allocation != Allocation::Random;
    if !args.json {
        if hosts {
            eprintln!(
                "simulating {} hosts x {} vnodes ({}), routing {}, seed {} ...",
                config.nodes, config.vnodes, config.allocation, config.routing, config.seed
            );
        } else {
            eprintln!(
                "simulating {} nodes, routing {}, seed {} ...",
                config.nodes, config.routing, config.seed
            );
        }
    }
    let r = LookupSim::new(config.clone()).run();
    let mut out = io::stdout().lock();
    if args.json {
        let mut v = serde_json::json!({
            "config": {
                "nodes": config.nodes,
                "routing": config.routing.to_string(),
                "cache": config.cache_entries,
                "successors": config.successors,
                "lookups": config.lookups,
                "workload": config.workload.to_string(),
                "keys": config.key_count(),
                "fail_fraction": config.fail_fraction,
                "seed": config.seed,
                "stabilize_ms": config.stabilize_ms,
                "maintenance_ms": config.maintenance_ms,
                "concurrency": config.concurrency,
            },
            "seed": config.seed,
            "hops": {
                "mean": r.hops.mean,
                "p1": r.hops.p1,
                "p50": r.hops.p50,
                "p99": r.hops.p99,
                "max": r.hops.max,
                "mean_to_predecessor": r.hops.mean_to_predecessor,
            },
            "failed_fraction": r.failed_fraction,
            "failed": r.failed,
            "crashed": r.crashed,
            "owner_crashed_fraction": r.owner_crashed_fraction,
            "state_per_node": r.state_per_node,
            "cache_entries_per_node": r.cache_entries_per_node,
            "cache_hit_rate": r.cache_hit_rate,
            "cache_stale": r.cache_stale,
            "maintenance_msgs_per_node_per_s": r.maintenance_msgs_per_node_per_s,
            "maintenance_during_lookups_per_node_per_s": r.maintenance_during_lookups_per_node_per_s,
            "sim_ms": r.sim_ms,
            "messages": r.messages,
            "wall_ms": r.wall_ms,
        });
        if hosts {
            v["config"]["vnodes"] = config.vnodes.into();
            v["config"]["allocation"] = config.allocation.to_string().into();
            v["state_per_host"] = r.state_per_host.into();
            v["hosts_known_per_host"] = r.hosts_known_per_host.into();
            v["maintenance_net_per_host_per_s"] = r.maintenance_net_per_host_per_s.into();
            v["maintenance_per_host_per_s"] = r.maintenance_per_host_per_s.into();
            v["maintenance_during_lookups_per_host_per_s"] =
                r.maintenance_during_lookups_per_host_per_s.into();
        }
        writeln!(out, "{v}")?;
    } else {
        let size = if hosts {
            format!(
                "hosts {}  vnodes {} ({})",
                config.nodes, config.vnodes, config.allocation
            )
        } else {
            format!("nodes {}", config.nodes)
        };
        writeln!(
            out,
            "{size}  routing {}  cache {}  successors {}  workload {} ({} keys)  fail-fraction {}  seed {}",
            config.routing,
            config.cache_entries,
            config.successors,
            config.workload,
            config.key_count(),
            config.fail_fraction,
            config.seed
        )?;
        writeln!(
            out,
            "{}: mean {:.3}  p1 {}  p50 {}  p99 {}  max {}  (to the predecessor, SIGCOMM'01 count: mean {:.3})",
            if hosts { "network hops" } else { "hops" },
            r.hops.mean,
            r.hops.p1,
            r.hops.p50,
            r.hops.p99,
            r.hops.max,
            r.hops.mean_to_predecessor
        )?;
        writeln!(
            out,
            "failed lookups: {} of {} ({:.4}); {} {} crashed, owning the keys of {:.4} of the lookups",
            r.failed,
            r.lookups,
            r.failed_fraction,
            r.crashed,
            if hosts { "hosts" } else { "nodes" },
            r.owner_crashed_fraction
        )?;
        if hosts {
            writeln!(
                out,
                "routing state per host: {:.1} entries over its {} vnodes ({:.1} per vnode), naming {:.1} other hosts",
                r.state_per_host, config.vnodes, r.state_per_node, r.hosts_known_per_host
            )?;
        } else {
            writeln!(out, "routing state per node: {:.1} nodes", r.state_per_node)?;
        }
        if config.cache_entries > 0 {
            writeln!(
                out,
                "cache: hit rate {:.3}, {:.1} entries per node, {} stale hits",
                r.cache_hit_rate, r.cache_entries_per_node, r.cache_stale
            )?;
        }
        if hosts {
            writeln!(
                out,
                "maintenance per host: {:.2} msgs per s over the network (window); {:.2} counting those \
                 between its own vnodes ({:.2} per vnode), {:.2} during the lookups",
                r.maintenance_net_per_host_per_s,
                r.maintenance_per_host_per_s,
                r.maintenance_msgs_per_node_per_s,
                r.maintenance_during_lookups_per_host_per_s
            )?;
        } else {
            writeln!(
                out,
                "maintenance: {:.2} msgs per node per s (window), {:.2} during the lookups",
                r.maintenance_msgs_per_node_per_s, r.maintenance_during_lookups_per_node_per_s
            )?;
        }
        writeln!(
            out,
            "simulated {} ms, {} messages, in {:.1} s",
            r.sim_ms,
            r.messages,
            r.wall_ms as f64 / 1000.0
        )?;
    }
    out.flush()?;
    Ok(Outcome::Success)
}

// --- balance -----------------------------------------------------------------------------

/// The positions per host `chordkv balance` measures by default: the Chord paper's Fig. 9
/// for random virtual nodes, powers of two up to 16 for balanced ones.
const DEFAULT_RANDOM_VNODES: [u16; 5] = [1, 2, 5, 10, 20];
const DEFAULT_BALANCED_VNODES: [u16; 5] = [1, 2, 4, 8, 16];

fn cmd_balance(args: BalanceArgs) -> anyhow::Result<Outcome> {
    let config = BalanceConfig {
        hosts: args.hosts as usize,
        keys: args.keys,
        seed: args.seed,
        replicas: args.replicas as usize,
    };
    let mut runs: Vec<(Allocation, u16)> = Vec::new();
    for (allocation, default) in [
        (Allocation::Random, DEFAULT_RANDOM_VNODES),
        (Allocation::Balanced, DEFAULT_BALANCED_VNODES),
    ] {
        let wanted = match allocation {
            Allocation::Random => args.allocation != AllocationArg::Balanced,
            Allocation::Balanced => args.allocation != AllocationArg::Random,
        };
        if wanted {
            let list = if args.vnodes.is_empty() {
                &default[..]
            } else {
                &args.vnodes[..]
            };
            runs.extend(list.iter().map(|v| (allocation, *v)));
        }
    }
    if !args.json {
        eprintln!(
            "balance: {} hosts, {} keys, seed {} ...",
            config.hosts, config.keys, config.seed
        );
    }
    let keys = balance::key_ids(config.keys, config.seed);
    let rows: Vec<BalanceRow> = runs
        .iter()
        .map(|(a, v)| balance::measure(&config, &keys, *a, *v))
        .collect();
    let floor = balance::equal_shares(config.hosts, &keys);
    let moves: Vec<Movement> = runs
        .iter()
        .map(|(a, v)| balance::movement(*a, args.movement_hosts as usize, *v, config.replicas, &keys))
        .collect();
    let mut out = io::stdout().lock();
    if args.json {
        let spread = |s: &Spread| {
            serde_json::json!({
                "mean": s.mean, "min": s.min, "p1": s.p1, "p50": s.p50, "p99": s.p99, "max": s.max,
            })
        };
        let v = serde_json::json!({
            "config": {
                "hosts": config.hosts,
                "keys": config.keys,
                "seed": config.seed,
                "replicas": config.replicas,
                "movement_hosts": args.movement_hosts,
            },
            "seed": config.seed,
            "equal_shares_keys_per_host": spread(&floor),
            "rings": rows.iter().map(|r| serde_json::json!({
                "allocation": r.allocation.to_string(),
                "vnodes": r.vnodes,
                "keys_per_host": spread(&r.keys),
                "keys_per_host_over_mean": spread(&r.keys.relative()),
                "share_over_mean": spread(&r.share),
                "copies_over_mean": spread(&r.replicated),
            })).collect::<Vec<_>>(),
            "movement": moves.iter().map(|m| serde_json::json!({
                "allocation": m.allocation.to_string(),
                "vnodes": m.vnodes,
                "hosts": m.hosts,
                "join_moved": m.join_moved,
                "join_moved_keys": m.join_moved_keys,
                "join_sources": m.join_sources,
                "leave_moved": m.leave_moved,
                "leave_moved_keys": m.leave_moved_keys,
                "leave_targets": m.leave_targets,
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "hosts {}  keys {} (mean {:.1} per host)  seed {}  replicas {}",
            config.hosts,
            config.keys,
            config.keys as f64 / config.hosts as f64,
            config.seed,
            config.replicas
        )?;
        writeln!(out, "keys per host (1st, 50th, 99th percentile, max; then over the mean), each host's share of the id space over the mean share, and its copies (the ids it holds a copy of, primary or replica) over the mean:")?;
        if config.replicas + 1 >= config.hosts {
            writeln!(
                out,
                "(with {} copies of each key on {} hosts every host holds every key: the copies columns are all 1)",
                config.replicas + 1,
                config.hosts
            )?;
        }
        writeln!(
            out,
            "{:<10} {:>3}  {:>6} {:>6} {:>6} {:>6}  {:>7} {:>8} {:>8}  {:>8} {:>9} {:>9}  {:>9} {:>10} {:>10}",
            "positions",
            "V",
            "p1",
            "p50",
            "p99",
            "max",
            "p1/mean",
            "p99/mean",
            "max/mean",
            "share p1",
            "share p99",
            "share max",
            "copies p1",
            "copies p99",
            "copies max"
        )?;
        for r in &rows {
            let k = r.keys.relative();
            writeln!(
                out,
                "{:<10} {:>3}  {:>6} {:>6} {:>6} {:>6}  {:>7.2} {:>8.2} {:>8.2}  {:>8.3} {:>9.3} {:>9.3}  {:>9.3} {:>10.3} {:>10.3}",
                r.allocation.to_string(),
                r.vnodes,
                r.keys.p1,
                r.keys.p50,
                r.keys.p99,
                r.keys.max,
                k.p1,
                k.p99,
                k.max,
                r.share.p1,
                r.share.p99,
                r.share.max,
                r.replicated.p1,
                r.replicated.p99,
                r.replicated.max
            )?;
        }
        let f = floor.relative();
        writeln!(
            out,
            "{:<10} {:>3}  {:>6} {:>6} {:>6} {:>6}  {:>7.2} {:>8.2} {:>8.2}  (equal shares: the noise of sampling keys alone)",
            "equal", 1, floor.p1, floor.p50, floor.p99, floor.max, f.p1, f.p99, f.max
        )?;
        let h = args.movement_hosts;
        writeln!(
            out,
            "moved by a join ({h} hosts, one added) and a leave (host 0 of the {} removed):",
            h + 1
        )?;
        writeln!(
            out,
            "{:<10} {:>3}  {:>13} {:>10} {:>10}  {:>14} {:>11} {:>8}",
            "positions",
            "V",
            "join id space",
            "join keys",
            "from hosts",
            "leave id space",
            "leave keys",
            "to hosts"
        )?;
        for m in &moves {
            writeln!(
                out,
                "{:<10} {:>3}  {:>13.4} {:>10.4} {:>10}  {:>14.4} {:>11.4} {:>8}",
                m.allocation.to_string(),
                m.vnodes,
                m.join_moved,
                m.join_moved_keys,
                m.join_sources,
                m.leave_moved,
                m.leave_moved_keys,
                m.leave_targets
            )?;
        }
        writeln!(
            out,
            "(an even share moved by the join is 1/{} = {:.4})",
            h + 1,
            1.0 / (h + 1) as f64
        )?;
    }
    out.flush()?;
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("127.0.0.1:7000").unwrap(),
            "127.0.0.1:7000".parse().unwrap()
        );
        assert!(parse_addr("localhost:7000").unwrap().ip().is_loopback());
        let err = parse_addr("not-an-address").unwrap_err().to_string();
        assert!(err.starts_with("invalid address 'not-an-address': "), "{err}");
        assert!(parse_addr("127.0.0.1").is_err());
        assert!(parse_addr(":7000").is_err());
    }
}
