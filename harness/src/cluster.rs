//! A local ring of real `chordkv node` processes on loopback, for `chordkv cluster`, the
//! integration tests and loadgen's fault injection.
//!
//! [`LocalCluster`] starts the nodes one after another (the first creates the ring, the others
//! `--join` it), and then injects faults by index: [`kill`](LocalCluster::kill) (SIGKILL, a
//! crash), [`terminate`](LocalCluster::terminate) (SIGTERM, a graceful leave: this is how a
//! node is *removed*), [`pause`](LocalCluster::pause)/[`resume`](LocalCluster::resume)
//! (SIGSTOP/SIGCONT, a node that hangs), [`restart`](LocalCluster::restart) (same address, so
//! the same ring id) and [`add_node`](LocalCluster::add_node). A node keeps its index for the
//! life of the cluster, dead or alive. Every process is killed when the cluster is dropped,
//! also when a test panics.
//!
//! [`NodeControl`] is the same set of operations as a trait, so that a driver of faults
//! (loadgen) can run against another implementation, e.g. nodes on remote hosts over ssh.
//! [`wait_for_ring`] is the convergence check they share.
//!
//! With [`NetworkMode::Namespaces`] every node runs in its own network namespace with its own
//! address on a private bridge ([`crate::netns`]; root only), and the network itself can fail:
//! [`partition`](LocalCluster::partition) drops every packet between groups of nodes (TCP
//! retransmits, and delivers late after the [`heal`](LocalCluster::heal)), while this process
//! keeps reaching every node. Every node then listens on the same port of its own address.
//!
//! Ports are picked by binding port 0 and closing the socket, which leaves a tiny window in
//! which another process may take the port; a node that exits before it answers is started
//! again on a fresh port (only when ports are picked, not with a `base_port`).

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{Error, Result};

use crate::netns;
use chordkv_client::{walk_ring_as, Access, Client, RingReport, NO_ACCESS};

/// How long a new node may take to answer its first `GET_INFO`.
/// Live nodes a started or restarted node is given to join through (`--join A,B,C`).
const JOIN_PEERS: usize = 3;
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node may take to leave after SIGTERM before it is killed.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between two checks of a process or of the ring.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Connection and request timeout of the probes (start-up checks, ring walks).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Attempts to start a node on a picked port before giving up.
const PORT_ATTEMPTS: usize = 5;
/// How long [`NodeControl::forget`] waits for each live node it tells.
const FORGET_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of a node's log quoted in a start-up error.
const LOG_TAIL_LINES: usize = 20;
/// The port of every node in [`NetworkMode::Namespaces`] without a `base_port` (each node has
/// its own address, so they can share it).
pub const NAMESPACE_NODE_PORT: u16 = 7000;
/// The RESP port of every node in [`NetworkMode::Namespaces`] without a `resp_base_port`.
pub const NAMESPACE_RESP_PORT: u16 = 6379;

/// Where the nodes of a [`LocalCluster`] run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// On the spec's `host` (loopback by default), in this process's network namespace.
    #[default]
    Host,
    /// Each in its own network namespace, with its own address on a private bridge
    /// ([`crate::netns`]), so that the cluster can be partitioned. Needs root and `ip`
    /// ([`netns::unavailable`] says why not); the spec's `host` is not used.
    Namespaces,
}

/// What to run and how.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The `chordkv` binary.
    pub binary: PathBuf,
    /// Nodes to start.
    pub nodes: usize,
    /// Node `i` listens on `base_port + i`; `None` picks free ports.
    pub base_port: Option<u16>,
    /// The address every node listens on and advertises.
    pub host: IpAddr,
    /// Extra arguments of every `chordkv node`, e.g. `["--stabilize-ms", "100"]`.
    pub node_args: Vec<String>,
    /// Extra arguments of node `i` after `node_args` (e.g. a store of its own); nodes past the
    /// end of the list get none.
    pub per_node_args: Vec<Vec<String>>,
    /// Write each node's stdout and stderr to `<log_dir>/node-<index>-<port>.log` (appended to
    /// across restarts). Without it, see `inherit_stderr`.
    pub log_dir: Option<PathBuf>,
    /// Without a `log_dir`: let nodes write to this process's stderr (true) or discard their
    /// output (false). A node's stdout is never inherited.
    pub inherit_stderr: bool,
    /// Start each node in its own process group, so that a terminal's Ctrl-C reaches only this
    /// process, which then stops the nodes one by one (clean graceful leaves). The price: nodes
    /// outlive this process if it is killed with SIGKILL. Off by default, so that interrupting
    /// a test run also stops its nodes.
    pub own_process_group: bool,
    /// See [`DEFAULT_START_TIMEOUT`].
    pub start_timeout: Duration,
    /// See [`DEFAULT_STOP_TIMEOUT`].
    pub stop_timeout: Duration,
    /// Give every node a Redis-protocol listener (`--resp`): node `i` on `resp_base_port + i`,
    /// or on a free port when that is `None`. A restarted node keeps its RESP address.
    pub resp: bool,
    /// See `resp`.
    pub resp_base_port: Option<u16>,
    /// Loopback (the default) or a network namespace per node (partitions).
    pub network: NetworkMode,
    /// How the launcher reaches the nodes to check on them, when they require credentials
    /// (`--requirepass`: user `default`) or TLS.
    pub access: Access,
}

impl ClusterSpec {
    /// `nodes` nodes of `binary` on 127.0.0.1, free ports, default node arguments, output
    /// discarded.
    pub fn new(binary: impl Into<PathBuf>, nodes: usize) -> ClusterSpec {
        ClusterSpec {
            binary: binary.into(),
            nodes,
            base_port: None,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            node_args: Vec::new(),
            per_node_args: Vec::new(),
            log_dir: None,
            inherit_stderr: false,
            own_process_group: false,
            start_timeout: DEFAULT_START_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            resp: false,
            resp_base_port: None,
            network: NetworkMode::Host,
            access: Access::default(),
        }
    }
}

/// How a node stopped after [`LocalCluster::terminate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It exited by itself, with this status (success after a graceful leave).
    Exited(ExitStatus),
    /// It did not exit within the stop timeout and was killed.
    Killed,
    /// It was not running.
    NotRunning,
}

impl Stopped {
    /// Whether the node left by itself with exit status 0.
    pub fn is_clean(&self) -> bool {
        matches!(self, Stopped::Exited(s) if s.success())
    }
}

/// Fault injection on the nodes of a ring, by index. Indices are stable: a node keeps its
/// index (and address) when it dies or restarts; [`NodeControl::add_node`] appends.
pub trait NodeControl {
    /// The address of every node ever started, by index.
    fn addrs(&self) -> Vec<SocketAddr>;
    /// Whether node `i`'s process is alive (a paused node is alive).
    fn is_running(&mut self, i: usize) -> bool;
    /// Whether node `i` is alive and not paused: a node the ring should contain.
    fn is_live(&mut self, i: usize) -> bool;
    /// Crash node `i` (SIGKILL). A dead node is left as it is.
    fn kill(&mut self, i: usize) -> Result<()>;
    /// Stop node `i` gracefully (SIGTERM: it hands its keys to its successor and leaves), and
    /// kill it if it has not exited within the stop timeout.
    fn terminate(&mut self, i: usize) -> Result<Stopped>;
    /// Freeze node `i` (SIGSTOP): it keeps its connections but answers nothing.
    fn pause(&mut self, i: usize) -> Result<()>;
    /// Unfreeze node `i` (SIGCONT).
    fn resume(&mut self, i: usize) -> Result<()>;
    /// Start the dead node `i` again on its address, joining a live node.
    fn restart(&mut self, i: usize) -> Result<()>;
    /// Start a new node on a new address, joining a live node; returns its index.
    fn add_node(&mut self) -> Result<usize>;
    /// Stop every node, one after another, as [`NodeControl::terminate`] does.
    fn stop_all(&mut self) -> Vec<(usize, Stopped)>;

    /// Drop every packet between nodes of different groups, silently (no error reaches the
    /// senders; TCP retransmits), replacing any partition in place. Nodes in no group keep
    /// reaching everyone; clients keep reaching every node.
    fn partition(&mut self, groups: &[Vec<usize>]) -> Result<()> {
        let _ = groups;
        Err(Error::Cluster(
            "this cluster cannot partition its network (only a local cluster in network namespaces can)"
                .to_string(),
        ))
    }

    /// Remove the partition in place, if any.
    fn heal(&mut self) -> Result<()> {
        Err(Error::Cluster(
            "this cluster cannot partition its network, so it has nothing to heal".to_string(),
        ))
    }

    /// Declares the dead node `i` gone for good, as an operator does with `chordkv forget
    /// IP:PORT` for a host that will not come back: a live node drops every ring position of
    /// the host from its lists and passes the notice around the ring. Under the partition
    /// policy `consistent` a dead node stays a member until then, and a range whose majority
    /// of copies was on dead nodes refuses writes and reads; once they are forgotten its next
    /// members serve it from the copies left. Errors: node `i` is still running (kill it
    /// first), or no live node took the notice (each one's error is named). A forgotten node
    /// that is restarted joins as a new member.
    fn forget(&mut self, i: usize) -> Result<()> {
        let addrs = self.addrs();
        let dead = *addrs
            .get(i)
            .ok_or_else(|| Error::Cluster(format!("no node {i}: the cluster has {} nodes", addrs.len())))?;
        if self.is_running(i) {
            return Err(Error::Cluster(format!(
                "node {i} ({dead}) is still running; kill it before forgetting it"
            )));
        }
        let live = self.live_addrs();
        let mut errors = Vec::new();
        for addr in live {
            let told = Client::connect_as(addr, FORGET_TIMEOUT, self.access()).and_then(|mut c| {
                // The ring knows the host's vnode 0 by its id; a node that does not list it
                // resolves the guess itself (the notice names the whole host).
                let at = chordkv_protocol::NodeAddr::new(dead, 0);
                let node = c
                    .member_at(at)?
                    .unwrap_or_else(|| chordkv_protocol::NodeRef::guess(at));
                c.forget_host(node)
            });
            match told {
                Ok(_) => return Ok(()),
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        Err(Error::Cluster(if errors.is_empty() {
            format!("cannot forget node {i} ({dead}): no live node to tell")
        } else {
            format!("cannot forget node {i} ({dead}): {}", errors.join("; "))
        }))
    }

    /// The addresses of the nodes that are alive and not paused.
    fn live_addrs(&mut self) -> Vec<SocketAddr> {
        let addrs = self.addrs();
        (0..addrs.len())
            .filter(|&i| self.is_live(i))
            .map(|i| addrs[i])
            .collect()
    }

    /// How the controller reaches the nodes to check on them (plainly by default).
    fn access(&self) -> &Access {
        &NO_ACCESS
    }

    /// Waits until the ring is consistent and made of exactly the live nodes.
    fn wait_consistent(&mut self, timeout: Duration) -> Result<RingReport> {
        let live = self.live_addrs();
        wait_for_ring(&live, timeout, None, self.access())
    }
}

/// The `chordkv` binary for a program of this workspace to start: `$CHORDKV_BIN` if set, else
/// `chordkv` next to the running executable (cargo puts every binary of a profile in
/// `target/<profile>/`), or one directory up (a test executable in `target/<profile>/deps/`).
///
/// # Errors
/// `CHORDKV_BIN` names no file, or no `chordkv` is found next to the executable: the message
/// says where it looked and to run `cargo build --bins` with the same profile.
pub fn chordkv_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CHORDKV_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(Error::Cluster(format!(
                "CHORDKV_BIN={} does not name a file",
                path.display()
            )));
        }
        return Ok(path);
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::Cluster(format!("cannot find this program's own executable: {e}")))?;
    let name = format!("chordkv{}", std::env::consts::EXE_SUFFIX);
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(&name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    Err(Error::Cluster(format!(
        "cannot find the chordkv binary next to {}: run `cargo build --bins` (the same profile, \
         e.g. `cargo build --release --bins`) or set CHORDKV_BIN",
        exe.display()
    )))
}

/// Polls [`walk_ring`] (from the first of `expected` that answers) until the ring is
/// consistent and its nodes are exactly `expected`, for at most `timeout`, or until `cancel`
/// is set. The error describes the last walk.
pub fn wait_for_ring(
    expected: &[SocketAddr],
    timeout: Duration,
    cancel: Option<&AtomicBool>,
    access: &Access,
) -> Result<RingReport> {
    wait_for_ring_unless(expected, timeout, cancel, access, &mut || None)
}

/// [`wait_for_ring`], giving up as soon as `abort` names a reason (a node process that
/// exited while the ring was forming: it will never answer).
fn wait_for_ring_unless(
    expected: &[SocketAddr],
    timeout: Duration,
    cancel: Option<&AtomicBool>,
    access: &Access,
    abort: &mut dyn FnMut() -> Option<String>,
) -> Result<RingReport> {
    if expected.is_empty() {
        return Err(Error::Cluster("no live node to walk the ring from".to_string()));
    }
    let want: BTreeSet<SocketAddr> = expected.iter().copied().collect();
    // Positions, not hosts: each host runs up to MAX_VNODES of them.
    let max_nodes = (want.len() * 2 + 8) * chordkv_core::options::MAX_VNODES as usize;
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no walk completed");
    loop {
        for &start in expected {
            match walk_ring_as(start, PROBE_TIMEOUT, max_nodes, access) {
                Ok(report) => {
                    let got: BTreeSet<SocketAddr> = report.addrs().into_iter().collect();
                    if report.consistent && got == want {
                        return Ok(report);
                    }
                    last = describe_walk(&report, &want);
                    break;
                }
                Err(e) => last = format!("cannot walk from {start}: {e}"),
            }
        }
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Cluster(format!(
                "interrupted while waiting for the ring; last walk: {last}"
            )));
        }
        if let Some(why) = abort() {
            return Err(Error::Cluster(why));
        }
        if Instant::now() >= deadline {
            return Err(Error::Cluster(format!(
                "the ring did not become consistent with {} nodes within {:.1} s; last walk: {last}",
                want.len(),
                timeout.as_secs_f64()
            )));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn describe_walk(report: &RingReport, want: &BTreeSet<SocketAddr>) -> String {
    let got: BTreeSet<SocketAddr> = report.addrs().into_iter().collect();
    let mut parts = Vec::new();
    parts.push(format!(
        "{} of {} processes reached ({} ring positions)",
        got.intersection(want).count(),
        want.len(),
        report.nodes.len()
    ));
    let missing: Vec<String> = want.difference(&got).map(|a| a.to_string()).collect();
    if !missing.is_empty() {
        parts.push(format!("missing {}", missing.join(", ")));
    }
    let extra: Vec<String> = got.difference(want).map(|a| a.to_string()).collect();
    if !extra.is_empty() {
        parts.push(format!("unexpected {}", extra.join(", ")));
    }
    parts.extend(report.problems.iter().cloned());
    parts.join("; ")
}

/// The first of `nodes` whose process exited although the cluster did not stop it (it could
/// not start: its port taken, an option refused), described with the last line of its log.
/// The node is reaped, so it counts as down from then on.
fn exited_node(nodes: &mut [LocalNode]) -> Option<String> {
    for (i, node) in nodes.iter_mut().enumerate() {
        let Some(status) = reap(node) else { continue };
        let last_line = node
            .log
            .as_ref()
            .and_then(|log| std::fs::read_to_string(log).ok())
            .and_then(|text| {
                text.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(str::to_string)
            });
        let log = match (&node.log, last_line) {
            (Some(path), Some(line)) => format!(": {line} (log {})", path.display()),
            (Some(path), None) => format!(" (log {})", path.display()),
            _ => String::new(),
        };
        return Some(format!(
            "node {i} ({}) exited while the ring was forming, {status}{log}",
            node.addr
        ));
    }
    None
}

/// One node process and what we know of it.
#[derive(Debug)]
struct LocalNode {
    addr: SocketAddr,
    /// The node's RESP listener, if the spec asks for one.
    resp: Option<SocketAddr>,
    child: Option<Child>,
    paused: bool,
    log: Option<PathBuf>,
}

/// A ring of `chordkv node` processes on this machine. See the module docs.
#[derive(Debug)]
pub struct LocalCluster {
    spec: ClusterSpec,
    nodes: Vec<LocalNode>,
    /// The nodes' namespaces, in [`NetworkMode::Namespaces`]. Declared after `nodes`, and the
    /// nodes are killed in `drop`, so it is deleted once they are gone.
    netns: Option<netns::Network>,
}

impl LocalCluster {
    /// Starts `spec.nodes` nodes one after another, each once the previous one answers: node 0
    /// creates the ring, the others join node 0. Does not wait for the ring to converge: see
    /// [`LocalCluster::wait_consistent`].
    pub fn start(spec: ClusterSpec) -> Result<LocalCluster> {
        if spec.nodes == 0 {
            return Err(Error::Cluster("a cluster needs at least one node".to_string()));
        }
        if !spec.binary.is_file() {
            return Err(Error::Cluster(format!(
                "the chordkv binary {} does not exist",
                spec.binary.display()
            )));
        }
        if let Some(dir) = &spec.log_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Cluster(format!("cannot create log directory {}: {e}", dir.display())))?;
        }
        let count = spec.nodes;
        let netns = match spec.network {
            NetworkMode::Host => None,
            NetworkMode::Namespaces => Some(netns::Network::create()?),
        };
        let mut cluster = LocalCluster {
            spec,
            nodes: Vec::with_capacity(count),
            netns,
        };
        let vnodes = cluster.vnodes();
        for i in 0..count {
            let join: Vec<SocketAddr> = cluster.nodes.iter().take(JOIN_PEERS).map(|n| n.addr).collect();
            let node = cluster.launch(i, None, join)?;
            cluster.nodes.push(node);
            if vnodes > 1 && i + 1 < count && cluster.may_read_ring(cluster.nodes[0].addr) {
                // The next node reads the ring to place its positions evenly: it must see
                // every position of the nodes before it.
                let addrs = cluster.addrs();
                let nodes = &mut cluster.nodes;
                wait_for_ring_unless(
                    &addrs,
                    cluster.spec.start_timeout,
                    None,
                    &cluster.spec.access,
                    &mut || exited_node(nodes),
                )?;
            }
        }
        Ok(cluster)
    }

    /// The specification the cluster was started with.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// Nodes ever started (the highest index + 1).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no node (never true for a started cluster).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The address of every node, by index, dead or alive.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// The address of node `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// The RESP (Redis protocol) address of every node, by index, when the spec asks for them.
    pub fn resp_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().filter_map(|n| n.resp).collect()
    }

    /// The RESP address of node `i`, when the spec asks for one.
    pub fn resp_addr(&self, i: usize) -> Option<SocketAddr> {
        self.nodes.get(i)?.resp
    }

    /// The process id of node `i`, if it is running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes.get(i)?.child.as_ref().map(|c| c.id())
    }

    /// Node `i`'s log file, if the cluster logs to a directory.
    pub fn log_path(&self, i: usize) -> Option<&Path> {
        self.nodes.get(i)?.log.as_deref()
    }

    /// A client connected to node `i`, with `timeout` per request.
    pub fn client(&self, i: usize, timeout: Duration) -> Result<Client> {
        let addr = self.node(i)?.addr;
        Ok(Client::connect_as(addr, timeout, &self.spec.access)?)
    }

    /// Whether node `i`'s process is alive (a paused node is alive). Reaps it if it exited.
    pub fn is_running(&mut self, i: usize) -> bool {
        let Some(node) = self.nodes.get_mut(i) else {
            return false;
        };
        reap(node).is_none() && node.child.is_some()
    }

    /// Whether node `i` is paused (SIGSTOP).
    pub fn is_paused(&self, i: usize) -> bool {
        self.nodes.get(i).is_some_and(|n| n.paused && n.child.is_some())
    }

    /// Whether node `i` is alive and not paused.
    pub fn is_live(&mut self, i: usize) -> bool {
        self.is_running(i) && !self.is_paused(i)
    }

    /// The addresses of the live (running, not paused) nodes.
    pub fn live_addrs(&mut self) -> Vec<SocketAddr> {
        let mut live = Vec::new();
        for i in 0..self.nodes.len() {
            if self.is_live(i) {
                live.push(self.nodes[i].addr);
            }
        }
        live
    }

    /// Nodes that exited since the last look, with their exit status: how a supervisor
    /// notices a node that died by itself. Nodes stopped through this API, or already found
    /// dead by [`LocalCluster::is_running`] and the methods built on it, are not reported.
    pub fn poll_exits(&mut self) -> Vec<(usize, ExitStatus)> {
        let mut exits = Vec::new();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let Some(status) = reap(node) {
                exits.push((i, status));
            }
        }
        exits
    }

    /// Waits until the ring is consistent and made of exactly the live nodes.
    pub fn wait_consistent(&mut self, timeout: Duration) -> Result<RingReport> {
        let live = self.live_addrs();
        wait_for_ring(&live, timeout, None, &self.spec.access)
    }

    /// [`LocalCluster::wait_consistent`], giving up early when `cancel` is set.
    ///
    /// For a ring being started: a node process that exited (it could not start, e.g. its port
    /// is taken) ends the wait at once with an error naming it and its log's last line.
    pub fn wait_consistent_or_cancel(
        &mut self,
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<RingReport> {
        if let Some(why) = exited_node(&mut self.nodes) {
            return Err(Error::Cluster(why));
        }
        let live = self.live_addrs();
        let nodes = &mut self.nodes;
        wait_for_ring_unless(&live, timeout, Some(cancel), &self.spec.access, &mut || {
            exited_node(nodes)
        })
    }

    /// Crashes node `i` with SIGKILL and reaps it. A dead node is left as it is.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let node = self.node_mut(i)?;
        if let Some(mut child) = node.child.take() {
            node.paused = false;
            // Fails only if the process already exited; `wait` reaps it either way.
            let _ = child.kill();
            child
                .wait()
                .map_err(|e| Error::Cluster(format!("cannot reap node {i} ({}): {e}", node.addr)))?;
        }
        Ok(())
    }

    /// Stops node `i` with SIGTERM (a graceful leave), waits for it to exit for at most the
    /// stop timeout, and kills it after that.
    pub fn terminate(&mut self, i: usize) -> Result<Stopped> {
        let stop_timeout = self.spec.stop_timeout;
        let node = self.node_mut(i)?;
        if reap(node).is_some() || node.child.is_none() {
            return Ok(Stopped::NotRunning);
        }
        let child = node.child.as_mut().expect("checked above");
        let pid = child.id();
        if node.paused {
            // A stopped process cannot act on SIGTERM.
            let _ = signal(pid, libc::SIGCONT);
            node.paused = false;
        }
        if signal(pid, libc::SIGTERM).is_ok() {
            if let Some(status) = wait_exit(child, stop_timeout)? {
                node.child = None;
                return Ok(Stopped::Exited(status));
            }
        }
        self.kill(i)?;
        Ok(Stopped::Killed)
    }

    /// Removes node `i` from the ring gracefully: the same as [`LocalCluster::terminate`].
    pub fn remove(&mut self, i: usize) -> Result<Stopped> {
        self.terminate(i)
    }

    /// Freezes node `i` with SIGSTOP.
    pub fn pause(&mut self, i: usize) -> Result<()> {
        let pid = self.running_pid(i)?;
        signal(pid, libc::SIGSTOP).map_err(|e| Error::Cluster(format!("cannot pause node {i}: {e}")))?;
        self.nodes[i].paused = true;
        Ok(())
    }

    /// Unfreezes node `i` with SIGCONT.
    pub fn resume(&mut self, i: usize) -> Result<()> {
        let pid = self.running_pid(i)?;
        signal(pid, libc::SIGCONT).map_err(|e| Error::Cluster(format!("cannot resume node {i}: {e}")))?;
        self.nodes[i].paused = false;
        Ok(())
    }

    /// Starts the dead node `i` again on its address (so with the same ring id), joining
    /// the first live nodes; with none left, it starts a new ring.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let addr = self.node(i)?.addr;
        if self.is_running(i) {
            return Err(Error::Cluster(format!(
                "node {i} ({addr}) is still running; kill or terminate it first"
            )));
        }
        let join = self.live_peers(Some(i));
        let resp = self.nodes[i].resp;
        let node = self.launch_with(i, Some(addr), resp, join)?;
        self.nodes[i] = node;
        Ok(())
    }

    /// Starts a new node on a new port (the next after the last with a `base_port`), joining
    /// the first live node; returns its index.
    pub fn add_node(&mut self) -> Result<usize> {
        let i = self.nodes.len();
        let join = self.live_peers(None);
        let node = self.launch(i, None, join)?;
        self.nodes.push(node);
        Ok(i)
    }

    /// Starts `count` new nodes at once, each joining the first live nodes, as a script that
    /// does not wait between them (or a supervisor starting a whole cluster) does; then waits
    /// for each to answer and returns their indices. Unlike [`LocalCluster::start`], the nodes
    /// read the ring and choose their positions while the others do the same: what concurrent
    /// joins make of the ring is what this shows.
    pub fn add_nodes_at_once(&mut self, count: usize) -> Result<Vec<usize>> {
        self.add_nodes_at_once_through(count, false)
    }

    /// [`LocalCluster::add_nodes_at_once`], each new node joining through a different live node
    /// first (the `k`-th new node's join list starts at the `k`-th live node, round robin), as
    /// processes started together from different machines' configurations do.
    pub fn add_nodes_at_once_through_different_nodes(&mut self, count: usize) -> Result<Vec<usize>> {
        self.add_nodes_at_once_through(count, true)
    }

    fn add_nodes_at_once_through(&mut self, count: usize, rotate: bool) -> Result<Vec<usize>> {
        let peers = self.live_peers(None);
        let first = self.nodes.len();
        let mut started = Vec::with_capacity(count);
        let mut spawn_all = || -> Result<()> {
            for i in first..first + count {
                if let Some(net) = &mut self.netns {
                    while net.hosts() <= i {
                        net.add_host()?;
                    }
                }
                let addr = self.pick_addr(i)?;
                let resp = self.pick_resp_addr(i)?;
                let mut join = peers.clone();
                if rotate && !join.is_empty() {
                    let by = (i - first) % join.len();
                    join.rotate_left(by);
                }
                let (child, log) = self.spawn(i, addr, resp, &join)?;
                started.push((i, join, addr, resp, child, log));
            }
            Ok(())
        };
        let spawned = spawn_all();
        // A port picked free may be taken before the node binds it (by any process of the
        // machine, another test's among them): such a node is started again, alone, on ports
        // picked again, as `launch` starts one.
        let retry_ports = self.spec.base_port.is_none() && self.netns.is_none();
        let mut ready = Ok(());
        for (i, join, addr, resp, mut child, log) in started {
            if ready.is_ok() && spawned.is_ok() {
                ready = self.wait_ready(&mut child, addr, log.as_deref());
                if ready.is_err() && retry_ports {
                    let _ = child.kill();
                    let _ = child.wait();
                    match self.launch(i, None, join) {
                        Ok(node) => {
                            self.nodes.push(node);
                            ready = Ok(());
                        }
                        Err(e) => ready = Err(e),
                    }
                    continue;
                }
            }
            if ready.is_err() || spawned.is_err() {
                let _ = child.kill();
                let _ = child.wait();
                continue;
            }
            self.nodes.push(LocalNode {
                addr,
                resp,
                child: Some(child),
                paused: false,
                log,
            });
        }
        spawned?;
        ready?;
        Ok((first..first + count).collect())
    }

    /// Stops every node, one after another (so each leave hands its keys to a live
    /// successor), as [`LocalCluster::terminate`] does. Returns how each running node stopped.
    pub fn stop_all(&mut self) -> Vec<(usize, Stopped)> {
        let mut stopped = Vec::new();
        for i in 0..self.nodes.len() {
            let outcome = match self.terminate(i) {
                Ok(outcome) => outcome,
                Err(_) => {
                    let _ = self.kill(i);
                    Stopped::Killed
                }
            };
            if outcome != Stopped::NotRunning {
                stopped.push((i, outcome));
            }
        }
        stopped
    }

    /// In [`NetworkMode::Namespaces`]: drops every packet between nodes of different groups
    /// (see [`netns::Network::partition`]), replacing any partition in place.
    pub fn partition(&mut self, groups: &[Vec<usize>]) -> Result<()> {
        let nodes = self.nodes.len();
        let net = self.network_mut()?;
        netns::check_groups(groups, nodes)?;
        net.partition(groups)
    }

    /// Removes the partition in place, if any.
    pub fn heal(&mut self) -> Result<()> {
        self.network_mut()?.heal()
    }

    /// The groups of the partition in place, if any.
    pub fn partitioned(&self) -> Option<&[Vec<usize>]> {
        self.netns.as_ref()?.partitioned()
    }

    /// The network namespace node `i` runs in, in [`NetworkMode::Namespaces`].
    pub fn namespace(&self, i: usize) -> Option<&str> {
        self.netns.as_ref()?.namespace(i)
    }

    fn network_mut(&mut self) -> Result<&mut netns::Network> {
        self.netns.as_mut().ok_or_else(|| {
            Error::Cluster(
                "partitions need a cluster whose nodes run in network namespaces (NetworkMode::Namespaces)"
                    .to_string(),
            )
        })
    }

    /// Kills every node at once (SIGKILL), as dropping the cluster does.
    pub fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.kill(i);
        }
    }

    fn node(&self, i: usize) -> Result<&LocalNode> {
        let len = self.nodes.len();
        self.nodes
            .get(i)
            .ok_or_else(|| Error::Cluster(format!("no node {i}: the cluster has {len} nodes")))
    }

    fn node_mut(&mut self, i: usize) -> Result<&mut LocalNode> {
        let len = self.nodes.len();
        self.nodes
            .get_mut(i)
            .ok_or_else(|| Error::Cluster(format!("no node {i}: the cluster has {len} nodes")))
    }

    fn running_pid(&mut self, i: usize) -> Result<u32> {
        let addr = self.node(i)?.addr;
        if !self.is_running(i) {
            return Err(Error::Cluster(format!("node {i} ({addr}) is not running")));
        }
        Ok(self.pid(i).expect("running"))
    }

    /// The first live node other than `except`.
    /// Up to [`JOIN_PEERS`] live nodes other than `except`, for a new node to join through:
    /// if the first dies before the join finishes, the node tries the next.
    fn live_peers(&mut self, except: Option<usize>) -> Vec<SocketAddr> {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&j| Some(j) != except)
            .filter(|&j| self.is_live(j))
            .take(JOIN_PEERS)
            .collect();
        live.into_iter().map(|j| self.nodes[j].addr).collect()
    }

    fn pick_addr(&self, index: usize) -> Result<SocketAddr> {
        self.pick_port(index, self.spec.base_port, NAMESPACE_NODE_PORT)
    }

    /// Node `index`'s RESP address, when the spec asks for one.
    fn pick_resp_addr(&self, index: usize) -> Result<Option<SocketAddr>> {
        if !self.spec.resp {
            return Ok(None);
        }
        self.pick_port(index, self.spec.resp_base_port, NAMESPACE_RESP_PORT)
            .map(Some)
    }

    /// `base + index` on the spec's host, or a free port without a base. In namespaces: on
    /// node `index`'s own address, `base + index` or the same port for every node.
    fn pick_port(&self, index: usize, base_port: Option<u16>, namespace_port: u16) -> Result<SocketAddr> {
        if let Some(net) = &self.netns {
            let port = match base_port {
                Some(base) => u16::try_from(index)
                    .ok()
                    .and_then(|i| base.checked_add(i))
                    .ok_or_else(|| Error::Cluster(format!("port {base} + {index} is out of range")))?,
                None => namespace_port,
            };
            return Ok(SocketAddr::new(IpAddr::V4(net.host_addr(index)), port));
        }
        let host = self.spec.host;
        match base_port {
            Some(base) => {
                let port = u16::try_from(index)
                    .ok()
                    .and_then(|i| base.checked_add(i))
                    .ok_or_else(|| Error::Cluster(format!("port {base} + {index} is out of range")))?;
                Ok(SocketAddr::new(host, port))
            }
            None => {
                let listener = TcpListener::bind((host, 0))
                    .map_err(|e| Error::Cluster(format!("cannot find a free port on {host}: {e}")))?;
                Ok(listener
                    .local_addr()
                    .map_err(Error::io("reading a picked port"))?)
            }
        }
    }

    /// Starts node `index` (on `addr`, or on a picked address) and waits until it answers.
    fn launch(&mut self, index: usize, addr: Option<SocketAddr>, join: Vec<SocketAddr>) -> Result<LocalNode> {
        self.launch_with(index, addr, None, join)
    }

    /// [`LocalCluster::launch`] with a RESP address to reuse (a restart).
    fn launch_with(
        &mut self,
        index: usize,
        addr: Option<SocketAddr>,
        resp: Option<SocketAddr>,
        join: Vec<SocketAddr>,
    ) -> Result<LocalNode> {
        if let Some(net) = &mut self.netns {
            while net.hosts() <= index {
                net.add_host()?;
            }
        }
        let retry_ports = addr.is_none() && self.spec.base_port.is_none() && self.netns.is_none();
        let attempts = if retry_ports { PORT_ATTEMPTS } else { 1 };
        let mut last_error = None;
        for _ in 0..attempts {
            let addr = match addr {
                Some(a) => a,
                None => self.pick_addr(index)?,
            };
            let resp = match resp {
                Some(r) => Some(r),
                None => self.pick_resp_addr(index)?,
            };
            let (mut child, log) = self.spawn(index, addr, resp, &join)?;
            match self.wait_ready(&mut child, addr, log.as_deref()) {
                Ok(()) => {
                    return Ok(LocalNode {
                        addr,
                        resp,
                        child: Some(child),
                        paused: false,
                        log,
                    })
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    fn spawn(
        &self,
        index: usize,
        addr: SocketAddr,
        resp: Option<SocketAddr>,
        join: &[SocketAddr],
    ) -> Result<(Child, Option<PathBuf>)> {
        let mut cmd = match &self.netns {
            Some(net) => net.command(index, &self.spec.binary),
            None => Command::new(&self.spec.binary),
        };
        cmd.arg("node").arg("--listen").arg(addr.to_string());
        if let Some(resp) = resp {
            cmd.arg("--resp").arg(resp.to_string());
        }
        let join = join.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
        if !join.is_empty() {
            cmd.arg("--join").arg(&join);
        }
        // In namespaces the clients (the tests, loadgen) reach the nodes over the private
        // bridge, from an address that is not loopback: protected mode would refuse them.
        if self.netns.is_some() && !self.spec.node_args.iter().any(|a| a == "--protected-mode") {
            cmd.args(["--protected-mode", "no"]);
        }
        cmd.args(&self.spec.node_args).stdin(Stdio::null());
        if let Some(extra) = self.spec.per_node_args.get(index) {
            cmd.args(extra);
        }
        if self.spec.own_process_group {
            cmd.process_group(0);
        }
        let log = match &self.spec.log_dir {
            Some(dir) => {
                let path = dir.join(format!("node-{index}-{}.log", addr.port()));
                let mut file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| Error::Cluster(format!("cannot open log file {}: {e}", path.display())))?;
                writeln!(
                    file,
                    "=== chordkv cluster: starting node {index} on {addr}{} ===",
                    if join.is_empty() {
                        String::new()
                    } else {
                        format!(", joining {join}")
                    }
                )
                .map_err(Error::io("writing a node's log file"))?;
                let out = file
                    .try_clone()
                    .map_err(Error::io("opening a node's log file twice"))?;
                cmd.stdout(out).stderr(file);
                Some(path)
            }
            None => {
                cmd.stdout(Stdio::null());
                cmd.stderr(if self.spec.inherit_stderr {
                    Stdio::inherit()
                } else {
                    Stdio::null()
                });
                None
            }
        };
        let child = cmd.spawn().map_err(|e| {
            Error::Cluster(format!(
                "cannot start {} for node {index}: {e}",
                self.spec.binary.display()
            ))
        })?;
        Ok((child, log))
    }

    /// Virtual nodes per node (`--vnodes` in the node arguments; the node's default without).
    fn vnodes(&self) -> u64 {
        self.spec
            .node_args
            .windows(2)
            .find(|w| w[0] == "--vnodes")
            .and_then(|w| w[1].parse::<u64>().ok())
            .unwrap_or(chordkv_core::options::DEFAULT_VNODES)
    }

    /// Whether the node at `addr` lets us read the ring: not when it refuses us as a client
    /// (protected mode, and we come from another host without credentials). The launcher then
    /// cannot wait for the ring between starts; each node still reads it itself, as a peer.
    fn may_read_ring(&self, addr: SocketAddr) -> bool {
        let info = Client::connect_as(addr, PROBE_TIMEOUT, &self.spec.access).and_then(|mut c| c.info());
        !matches!(info, Err(chordkv_client::ClientError::Server { .. }))
    }

    /// With virtual nodes, whether every vnode of the node at `addr` owns its range: the next
    /// node reads the ring to place its own positions, so it must see these (a node that
    /// cannot say is taken as settled).
    fn vnodes_settled(&self, addr: SocketAddr) -> bool {
        if self.vnodes() <= 1 {
            return true;
        }
        let stats = Client::connect_as(addr, PROBE_TIMEOUT, &self.spec.access).and_then(|mut c| c.stats());
        match stats {
            Ok(s) => {
                let get = |name: &str| s.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
                get("vnodes_active") >= get("vnodes")
            }
            Err(chordkv_client::ClientError::Server { .. }) => true,
            Err(_) => false,
        }
    }

    /// Waits until the node at `addr` answers `GET_INFO` (and, with vnodes, every vnode owns
    /// its range), failing if its process exits first.
    fn wait_ready(&self, child: &mut Child, addr: SocketAddr, log: Option<&Path>) -> Result<()> {
        let deadline = Instant::now() + self.spec.start_timeout;
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(Error::io("checking on a node process"))?
            {
                return Err(Error::Cluster(format!(
                    "node on {addr} exited during start-up ({status}){}",
                    log_tail(log)
                )));
            }
            // An error reply counts: the node is up and refusing us (protected mode, no login).
            let answered =
                Client::connect_as(addr, PROBE_TIMEOUT, &self.spec.access).and_then(|mut c| c.info());
            if matches!(answered, Ok(_) | Err(chordkv_client::ClientError::Server { .. }))
                && child
                    .try_wait()
                    .map_err(Error::io("checking on a node process"))?
                    .is_none()
                && self.vnodes_settled(addr)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let why = answered.err().map(|e| e.to_string()).unwrap_or_default();
                return Err(Error::Cluster(format!(
                    "node on {addr} did not answer within {:.1} s: {why}{}",
                    self.spec.start_timeout.as_secs_f64(),
                    log_tail(log)
                )));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

impl NodeControl for LocalCluster {
    fn addrs(&self) -> Vec<SocketAddr> {
        LocalCluster::addrs(self)
    }
    fn access(&self) -> &Access {
        &self.spec.access
    }
    fn is_running(&mut self, i: usize) -> bool {
        LocalCluster::is_running(self, i)
    }
    fn is_live(&mut self, i: usize) -> bool {
        LocalCluster::is_live(self, i)
    }
    fn kill(&mut self, i: usize) -> Result<()> {
        LocalCluster::kill(self, i)
    }
    fn terminate(&mut self, i: usize) -> Result<Stopped> {
        LocalCluster::terminate(self, i)
    }
    fn pause(&mut self, i: usize) -> Result<()> {
        LocalCluster::pause(self, i)
    }
    fn resume(&mut self, i: usize) -> Result<()> {
        LocalCluster::resume(self, i)
    }
    fn restart(&mut self, i: usize) -> Result<()> {
        LocalCluster::restart(self, i)
    }
    fn add_node(&mut self) -> Result<usize> {
        LocalCluster::add_node(self)
    }
    fn stop_all(&mut self) -> Vec<(usize, Stopped)> {
        LocalCluster::stop_all(self)
    }
    fn partition(&mut self, groups: &[Vec<usize>]) -> Result<()> {
        LocalCluster::partition(self, groups)
    }
    fn heal(&mut self) -> Result<()> {
        LocalCluster::heal(self)
    }
}

/// If the node's process has exited, reaps it, forgets it and returns its status.
fn reap(node: &mut LocalNode) -> Option<ExitStatus> {
    let child = node.child.as_mut()?;
    match child.try_wait() {
        Ok(Some(status)) => {
            node.child = None;
            node.paused = false;
            Some(status)
        }
        Ok(None) => None,
        // Cannot happen for our own child; treat it as still running.
        Err(_) => None,
    }
}

/// Waits at most `timeout` for `child` to exit.
fn wait_exit(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(Error::io("checking on a node process"))?
        {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our unreaped child, so it
    // cannot have been recycled for another process.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The last lines of a log file, formatted to follow an error message.
fn log_tail(log: Option<&Path>) -> String {
    let Some(path) = log else {
        return String::new();
    };
    let mut text = String::new();
    let read = File::open(path).and_then(|mut f| {
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(())
    });
    if read.is_err() {
        return format!(" (log: {})", path.display());
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    format!("\n--- last lines of {} ---\n{}", path.display(), tail.join("\n"))
}
