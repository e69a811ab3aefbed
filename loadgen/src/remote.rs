//! Fault injection on a cluster deployed over ssh with `deploy/cluster.sh` (`loadgen
//! --inventory FILE`): [`RemoteCluster`] implements [`NodeControl`] by running
//! `deploy/cluster.sh INVENTORY kill|stop|pause|resume|start HOST`, so a workload's `faults:`
//! (workloads/failure.yaml, churn.yaml) run against the deployed cluster unchanged.
//!
//! ```text
//!   fault thread -> RemoteCluster::kill(2) -> bash deploy/cluster.sh INV kill h3
//!                                              -> ssh h3 bash DIR/node-ctl.sh kill
//! ```
//!
//! Node indices: the inventory's hosts in order, spares (`spare=yes`) left out unless their
//! node already runs; `add` starts the next spare host, which joins the ring and gets the next
//! index. The state of every node (running, paused, dead) is read once at the start with
//! `cluster.sh INV state`, then follows the actions taken, as [`LocalCluster`] follows its
//! children; after an action fails, it is read again. The workload's `cluster:` section does
//! not apply: the inventory configures the nodes. The cluster is left running at the end, with
//! the nodes the faults killed still dead (`cluster.sh INV up` starts them again).
//!
//! The script's ssh connections to the hosts are kept open between calls
//! (`CHORDKV_SSH_MUX_DIR`), so that a fault costs a round trip, not a login; they are closed
//! when the cluster is dropped (and expire by themselves if loadgen dies first).
//!
//! [`LocalCluster`]: chordkv_harness::cluster::LocalCluster

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use chordkv_harness::cluster::{NodeControl, Stopped};

/// Backstop of one `cluster.sh` call; the script bounds every ssh call and wait itself.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// Where the script is, relative to the repository (or the current directory).
pub const CLUSTER_SCRIPT: &str = "deploy/cluster.sh";
/// Pause between two checks of a running script.
const POLL: Duration = Duration::from_millis(10);

/// What `cluster.sh state` says about a host's node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    Running,
    /// SIGSTOPped: alive, but not a node the ring should contain.
    Paused,
    Dead,
    /// `unreachable` (ssh failed), `not-pushed` or `error`: not running as far as we know.
    Unknown(String),
}

impl NodeState {
    fn parse(word: &str) -> NodeState {
        match word {
            "running" => NodeState::Running,
            "paused" => NodeState::Paused,
            "dead" => NodeState::Dead,
            other => NodeState::Unknown(other.to_string()),
        }
    }
}

/// One host of the inventory.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    /// The node's address (advertised, else listen).
    pub addr: SocketAddr,
    /// Started only by an `add` fault.
    pub spare: bool,
    pub state: NodeState,
}

/// A cluster deployed with `deploy/cluster.sh`; see the module docs.
#[derive(Debug)]
pub struct RemoteCluster {
    script: PathBuf,
    inventory: PathBuf,
    /// Where the script keeps its ssh connections across calls.
    mux_dir: PathBuf,
    hosts: Vec<Host>,
    /// Node index -> index in `hosts`.
    nodes: Vec<usize>,
}

/// `$CHORDKV_CLUSTER_SH`, else `deploy/cluster.sh` under the current directory, else under an
/// ancestor of this executable's directory (`target/release/loadgen` -> the repository).
pub fn find_cluster_script() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CHORDKV_CLUSTER_SH") {
        return Ok(PathBuf::from(path));
    }
    let here = PathBuf::from(CLUSTER_SCRIPT);
    if here.is_file() {
        return Ok(here);
    }
    let exe = std::env::current_exe().map_err(|e| Error::step("cannot find loadgen's own executable", e))?;
    for dir in exe.ancestors().skip(1) {
        let candidate = dir.join(CLUSTER_SCRIPT);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(Error::Remote(format!(
        "cannot find {CLUSTER_SCRIPT} (run loadgen from the repository, or set CHORDKV_CLUSTER_SH)"
    )))
}

/// Parses the output of `cluster.sh INVENTORY state`: `NAME ADDR node|spare STATE [PID]`.
pub fn parse_state(text: &str) -> Result<Vec<Host>> {
    let mut hosts = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [name, addr, role, state, ..] = words[..] else {
            return Err(Error::Remote(format!(
                "unexpected line from cluster.sh state: '{line}'"
            )));
        };
        let addr: SocketAddr = addr.parse().map_err(|_| {
            Error::Remote(format!(
                "host {name}: '{addr}' is not IP:PORT (loadgen needs numeric addresses)"
            ))
        })?;
        let spare = match role {
            "node" => false,
            "spare" => true,
            _ => return Err(Error::Remote(format!("unexpected role '{role}' in '{line}'"))),
        };
        hosts.push(Host {
            name: name.to_string(),
            addr,
            spare,
            state: NodeState::parse(state),
        });
    }
    if hosts.is_empty() {
        return Err(Error::Remote("cluster.sh state listed no host".to_string()));
    }
    Ok(hosts)
}

impl RemoteCluster {
    /// Reads the hosts and the state of their nodes (`cluster.sh INVENTORY state`) with
    /// `script` (see [`find_cluster_script`]).
    pub fn open(inventory: &Path, script: PathBuf) -> Result<RemoteCluster> {
        if !inventory.is_file() {
            return Err(Error::Remote(format!(
                "no inventory file {}",
                inventory.display()
            )));
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let mux_dir = std::env::temp_dir().join(format!(
            "ckv-ssh-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cluster = RemoteCluster {
            script,
            inventory: inventory.to_path_buf(),
            mux_dir,
            hosts: Vec::new(),
            nodes: Vec::new(),
        };
        cluster.hosts = parse_state(&cluster.script_output(&["state"])?)?;
        cluster.nodes = (0..cluster.hosts.len())
            .filter(|&h| {
                let host = &cluster.hosts[h];
                !host.spare || matches!(host.state, NodeState::Running | NodeState::Paused)
            })
            .collect();
        Ok(cluster)
    }

    /// What `loadgen --inventory FILE [--nodes ...]` needs: the cluster, and the addresses to
    /// send load to: `nodes` if given (each must be a host of the inventory), else every live
    /// node. Warns on stderr about nodes that are not running.
    pub fn for_run(
        inventory: &Path,
        nodes: Option<&[SocketAddr]>,
    ) -> Result<(RemoteCluster, Vec<SocketAddr>)> {
        let mut cluster = RemoteCluster::open(inventory, find_cluster_script()?)?;
        let inv = inventory.display();
        for host in cluster.hosts.iter().filter(|h| !h.spare) {
            if host.state != NodeState::Running {
                eprintln!(
                    "loadgen: warning: {} ({}) is {}; `{CLUSTER_SCRIPT} {inv} up` starts it",
                    host.name,
                    host.addr,
                    host.state_name()
                );
            }
        }
        let addrs = match nodes {
            Some(nodes) => {
                let known = cluster.addrs();
                if let Some(a) = nodes.iter().find(|a| !known.contains(a)) {
                    return Err(Error::Remote(format!(
                        "--nodes names {a}, which is not a node of {inv}"
                    )));
                }
                nodes.to_vec()
            }
            None => cluster.live_addrs(),
        };
        if addrs.is_empty() {
            return Err(Error::Remote(format!(
                "no node of {inv} is running: `{CLUSTER_SCRIPT} {inv} up` starts them"
            )));
        }
        eprintln!(
            "loadgen: the cluster of {inv}: {} nodes, {} running; faults go through {}",
            cluster.nodes.len(),
            cluster.live_addrs().len(),
            cluster.script.display()
        );
        Ok((cluster, addrs))
    }

    /// Every host of the inventory, with the state loadgen believes its node is in.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    fn host(&self, i: usize) -> Result<&Host> {
        let len = self.nodes.len();
        self.nodes
            .get(i)
            .map(|&h| &self.hosts[h])
            .ok_or_else(|| Error::Remote(format!("no node {i}: the cluster has {len} nodes")))
    }

    /// Runs `cluster.sh INVENTORY args...` for node `i`'s host; on success the node is in
    /// `after`. On failure the states are read again, and the error says what the script said.
    fn act(&mut self, i: usize, command: &str, after: NodeState) -> Result<String> {
        let h = self.nodes[i];
        let name = self.hosts[h].name.clone();
        match self.script_output(&[command, &name]) {
            Ok(out) => {
                self.hosts[h].state = after;
                Ok(out)
            }
            Err(e) => {
                self.refresh();
                Err(Error::step(
                    format!("node {i} ({name}, {})", self.hosts[h].addr),
                    e,
                ))
            }
        }
    }

    /// Reads every node's state again; keeps the old states if that fails.
    fn refresh(&mut self) {
        let Ok(hosts) = self.script_output(&["state"]).and_then(|out| parse_state(&out)) else {
            return;
        };
        for (old, new) in self.hosts.iter_mut().zip(hosts) {
            if old.name == new.name {
                old.state = new.state;
            }
        }
    }

    /// Runs the script with the inventory and `args`, bounded by [`SCRIPT_TIMEOUT`]; its
    /// stdout, or an error with its stderr.
    fn script_output(&self, args: &[&str]) -> Result<String> {
        let what = format!("{} {}", CLUSTER_SCRIPT, args.join(" "));
        let mut child = Command::new("bash")
            .arg(&self.script)
            .arg(&self.inventory)
            .args(args)
            .env("CHORDKV_SSH_MUX_DIR", &self.mux_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::step(format!("cannot run bash {}", self.script.display()), e))?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = wait_bounded(&mut child, SCRIPT_TIMEOUT);
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        match status? {
            Some(s) if s.success() => Ok(out),
            Some(s) => {
                let why = err.trim();
                Err(Error::Remote(format!(
                    "`{what}` failed ({s}): {}",
                    if why.is_empty() { out.trim() } else { why }
                )))
            }
            None => Err(Error::Remote(format!(
                "`{what}` did not finish within {} s",
                SCRIPT_TIMEOUT.as_secs()
            ))),
        }
    }
}

impl Drop for RemoteCluster {
    fn drop(&mut self) {
        if self.mux_dir.exists() {
            let _ = self.script_output(&["disconnect"]);
            let _ = std::fs::remove_dir_all(&self.mux_dir);
        }
    }
}

impl Host {
    fn state_name(&self) -> &str {
        match &self.state {
            NodeState::Running => "running",
            NodeState::Paused => "paused",
            NodeState::Dead => "dead",
            NodeState::Unknown(s) => s,
        }
    }
}

/// Reads a pipe to its end on a thread, so that a chatty child never blocks on a full pipe.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut text);
        }
        text
    })
}

/// Waits at most `timeout` for `child`; kills it (and returns `None`) after that.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().map_err(Error::io("checking on ssh"))? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// The node library's error for a remote operation that failed (ssh, the remote script),
/// with its whole chain of context.
fn as_cluster_error<T>(r: Result<T>) -> chordkv_harness::Result<T> {
    r.map_err(|e| chordkv_harness::Error::Cluster(format!("{e:#}")))
}

/// The faults, as the hosts' control script runs them.
impl RemoteCluster {
    fn kill_on_host(&mut self, i: usize) -> Result<()> {
        if !self.is_running(i) {
            self.host(i)?;
            return Ok(());
        }
        self.act(i, "kill", NodeState::Dead).map(|_| ())
    }

    fn terminate_on_host(&mut self, i: usize) -> Result<Stopped> {
        if !self.is_running(i) {
            self.host(i)?;
            return Ok(Stopped::NotRunning);
        }
        let out = self.act(i, "stop", NodeState::Dead)?;
        // `NAME: stopped|killed|not-running`
        Ok(match out.split_whitespace().last() {
            Some("stopped") => Stopped::Exited(ExitStatus::from_raw(0)),
            Some("not-running") => Stopped::NotRunning,
            _ => Stopped::Killed,
        })
    }

    fn pause_on_host(&mut self, i: usize) -> Result<()> {
        if !self.is_live(i) {
            return Err(Error::Remote(format!(
                "node {i} ({}) is not running",
                self.host(i)?.addr
            )));
        }
        self.act(i, "pause", NodeState::Paused).map(|_| ())
    }

    fn resume_on_host(&mut self, i: usize) -> Result<()> {
        if !self.is_running(i) {
            return Err(Error::Remote(format!(
                "node {i} ({}) is not running",
                self.host(i)?.addr
            )));
        }
        self.act(i, "resume", NodeState::Running).map(|_| ())
    }

    fn restart_on_host(&mut self, i: usize) -> Result<()> {
        if self.is_running(i) {
            let addr = self.host(i)?.addr;
            return Err(Error::Remote(format!(
                "node {i} ({addr}) is still running; kill or terminate it first"
            )));
        }
        self.act(i, "start", NodeState::Running).map(|_| ())
    }

    fn add_node_on_host(&mut self) -> Result<usize> {
        let Some(h) = (0..self.hosts.len()).find(|h| self.hosts[*h].spare && !self.nodes.contains(h)) else {
            return Err(Error::Remote(format!(
                "no spare host left in {}: add a host line with spare=yes to the inventory and push \
                 (remote clusters grow only onto hosts of the inventory)",
                self.inventory.display()
            )));
        };
        let i = self.nodes.len();
        self.nodes.push(h);
        if let Err(e) = self.act(i, "start", NodeState::Running) {
            self.nodes.pop();
            return Err(e);
        }
        Ok(i)
    }
}

impl NodeControl for RemoteCluster {
    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|&h| self.hosts[h].addr).collect()
    }

    fn is_running(&mut self, i: usize) -> bool {
        self.host(i)
            .is_ok_and(|h| matches!(h.state, NodeState::Running | NodeState::Paused))
    }

    fn is_live(&mut self, i: usize) -> bool {
        self.host(i).is_ok_and(|h| h.state == NodeState::Running)
    }

    fn kill(&mut self, i: usize) -> chordkv_harness::Result<()> {
        as_cluster_error(self.kill_on_host(i))
    }

    fn terminate(&mut self, i: usize) -> chordkv_harness::Result<Stopped> {
        as_cluster_error(self.terminate_on_host(i))
    }

    fn pause(&mut self, i: usize) -> chordkv_harness::Result<()> {
        as_cluster_error(self.pause_on_host(i))
    }

    fn resume(&mut self, i: usize) -> chordkv_harness::Result<()> {
        as_cluster_error(self.resume_on_host(i))
    }

    fn restart(&mut self, i: usize) -> chordkv_harness::Result<()> {
        as_cluster_error(self.restart_on_host(i))
    }

    fn add_node(&mut self) -> chordkv_harness::Result<usize> {
        as_cluster_error(self.add_node_on_host())
    }

    fn stop_all(&mut self) -> Vec<(usize, Stopped)> {
        let mut stopped = Vec::new();
        for i in 0..self.nodes.len() {
            if !self.is_running(i) {
                continue;
            }
            let outcome = self.terminate(i).unwrap_or(Stopped::Killed);
            if outcome != Stopped::NotRunning {
                stopped.push((i, outcome));
            }
        }
        stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_lines_parse() {
        let hosts = parse_state(
            "h1 10.0.0.1:7000 node running 123\nh2 10.0.0.2:7000 node paused 9\n\
             h3 10.0.0.3:7000 node dead\nh4 10.0.0.4:7000 spare unreachable\n",
        )
        .unwrap();
        assert_eq!(hosts.len(), 4);
        assert_eq!(hosts[0].state, NodeState::Running);
        assert_eq!(hosts[1].state, NodeState::Paused);
        assert_eq!(hosts[2].state, NodeState::Dead);
        assert!(hosts[3].spare);
        assert_eq!(hosts[3].state, NodeState::Unknown("unreachable".into()));
        assert_eq!(hosts[0].addr, "10.0.0.1:7000".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn bad_state_lines_are_errors() {
        assert!(parse_state("").is_err());
        assert!(parse_state("h1 10.0.0.1:7000 node").is_err());
        assert!(parse_state("h1 example.com:7000 node running 1").is_err());
        assert!(parse_state("h1 10.0.0.1:7000 leader running 1").is_err());
    }
}
