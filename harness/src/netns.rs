//! A private network for a local cluster: every node in its own network namespace, so that the
//! network between nodes can fail while the processes keep running (`partition`, `heal`).
//!
//! ```text
//!   root namespace (loadgen, tests): 10.78.X.1 on the bridge, reaches every node at all times
//!        │
//!   bridge ck<id>b ─── veth ck<id>h0 ═══ eth0 10.78.X.10   namespace ck<id>-0: chordkv node 0
//!                  ─── veth ck<id>h1 ═══ eth0 10.78.X.11   namespace ck<id>-1: chordkv node 1
//!                  ─── ...
//!
//!   partition [[0, 1], [2]]: in namespace 0 and 1, "10.78.X.12/32 via 10.78.X.2";
//!                            in namespace 2, "10.78.X.10/32 via 10.78.X.2" and ".11" likewise
//!   heal: those routes are removed (they carry their own protocol number, 77)
//! ```
//!
//! **Why routes.** A packet across the cut must vanish, not be refused: the sender's TCP sees
//! nothing but missing acknowledgements, keeps retransmitting, and once the cut heals delivers
//! the held bytes late (one of the faults under test). 10.78.X.2, *the void*, is a next hop
//! every namespace resolves to a fixed MAC address no interface has (a permanent neighbour
//! entry, so no ARP is ever sent for it): the bridge floods such frames and every port
//! discards them, with no ICMP error and no reset. A route change invalidates the routes that
//! sockets cached, so established connections are cut at once too. The other mechanisms need
//! more than `ip`: tc filters that drop need the `gact` action, which kernels built without
//! modules may lack (this project's machine has no `act_gact`); iptables and nftables are not
//! installed on a fresh Debian. Only the sending side's routes change, so the root namespace
//! keeps reaching every node.
//!
//! Names start with `ck`, then this process's id and a counter in hex (`ck00a1b2003`), so that
//! runs in parallel do not clash; leftovers of processes that died without cleaning up (a
//! SIGKILL) are deleted when the next network is made. Everything is deleted on drop,
//! processes still inside the namespaces included.
//!
//! Needs root and the `ip` command (iproute2); [`unavailable`] says why when they are missing.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::{Error, Result};

/// The first two octets of every network's addresses: 10.78.X.0/24, one X per network.
const NET_PREFIX: [u8; 2] = [10, 78];
/// The last octet of the root namespace's address on the bridge.
const GATEWAY_OCTET: u8 = 1;
/// The last octet of the void, the next hop of every route across a cut.
const VOID_OCTET: u8 = 2;
/// The void's MAC address: locally administered, unicast, owned by no interface.
const VOID_MAC: &str = "02:63:6b:76:00:02";
/// The last octet of node 0's address; node i has `FIRST_HOST_OCTET + i`.
const FIRST_HOST_OCTET: u8 = 10;
/// Hosts one network holds (10.78.X.10 to 10.78.X.254).
pub const MAX_HOSTS: usize = 255 - FIRST_HOST_OCTET as usize;
/// The route protocol number that marks the routes of a partition, so that a heal removes
/// exactly those (`ip route flush proto 77`).
const PARTITION_PROTO: u8 = 77;
/// Where `ip` is looked for when it is not on `PATH` (root's sbin directories often are not).
const IP_FALLBACKS: [&str; 4] = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"];

/// Networks made by this process, for their names.
static NEXT_NETWORK: AtomicU32 = AtomicU32::new(0);
/// Held while a network picks its subnet and creates its bridge, so that two networks of this
/// process never take the same one.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// Why this process cannot make network namespaces, or `None` if it can (as far as can be
/// told without trying: root, and `ip` found).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!(
            "network namespaces need root, and this process runs as uid {euid}"
        ));
    }
    if find_ip().is_none() {
        return Some("the `ip` command (Debian package iproute2) is not installed or not on PATH".into());
    }
    None
}

/// The `ip` binary: on `PATH`, else in the usual sbin directories.
fn find_ip() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("ip"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(IP_FALLBACKS.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// One private network and its namespaces. See the module docs.
#[derive(Debug)]
pub struct Network {
    ip: PathBuf,
    /// `ck` + pid + counter: the prefix of every name.
    id: String,
    /// X of 10.78.X.0/24.
    subnet: u8,
    /// Namespace names, by host index.
    hosts: Vec<String>,
    /// The groups of the partition in place, if any.
    partition: Option<Vec<Vec<usize>>>,
}

impl Network {
    /// Makes the bridge and the root namespace's address on it; hosts come with
    /// [`Network::add_host`].
    pub fn create() -> Result<Network> {
        if let Some(why) = unavailable() {
            return Err(Error::Network(format!("cannot make network namespaces: {why}")));
        }
        let ip = find_ip().expect("checked by unavailable()");
        let _guard = CREATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        remove_leftovers(&ip);
        let n = NEXT_NETWORK.fetch_add(1, Ordering::Relaxed) & 0xfff;
        let id = format!("ck{:06x}{n:03x}", std::process::id() & 0xff_ffff);
        let subnet = free_subnet(&ip, n)?;
        let mut net = Network {
            ip,
            id,
            subnet,
            hosts: Vec::new(),
            partition: None,
        };
        let bridge = net.bridge();
        let gateway = net.gateway();
        let made = net.run(
            None,
            &[
                format!("link add {bridge} type bridge"),
                format!("addr add {gateway}/24 dev {bridge}"),
                format!("link set {bridge} up"),
            ],
        );
        if let Err(e) = made {
            net.teardown();
            return Err(e.network_context(format!("cannot make the bridge {bridge}")));
        }
        // Keep a host firewall (br_netfilter) out of the bridged traffic; absent on kernels
        // without it, so a failure is ignored.
        let _ = net.run(
            None,
            &[format!(
                "link set {bridge} type bridge nf_call_iptables 0 nf_call_ip6tables 0 nf_call_arptables 0"
            )],
        );
        Ok(net)
    }

    /// The root namespace's address on the bridge: what the nodes see a client come from.
    pub fn gateway(&self) -> Ipv4Addr {
        self.addr(GATEWAY_OCTET)
    }

    /// Host `i`'s address (it exists once [`Network::add_host`] returned `i`).
    pub fn host_addr(&self, i: usize) -> Ipv4Addr {
        self.addr(FIRST_HOST_OCTET + i as u8)
    }

    /// Hosts made so far.
    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    /// The namespace of host `i`.
    pub fn namespace(&self, i: usize) -> Option<&str> {
        self.hosts.get(i).map(String::as_str)
    }

    /// Makes the next host: a namespace with an interface on the bridge and its own address.
    /// Returns its index. A host made while a partition is in place is on no side of it.
    pub fn add_host(&mut self) -> Result<usize> {
        let i = self.hosts.len();
        if i >= MAX_HOSTS {
            return Err(Error::Network(format!(
                "a network holds at most {MAX_HOSTS} hosts"
            )));
        }
        let ns = format!("{}-{i}", self.id);
        let veth = format!("{}h{i}", self.id);
        let bridge = self.bridge();
        self.run(
            None,
            &[
                format!("netns add {ns}"),
                format!("link add {veth} type veth peer name eth0 netns {ns}"),
                format!("link set {veth} master {bridge} up"),
            ],
        )
        .map_err(|e| e.network_context(format!("cannot make the namespace {ns}")))?;
        // Pushed now so that a failure below still deletes the namespace.
        self.hosts.push(ns.clone());
        let addr = self.host_addr(i);
        let void = self.addr(VOID_OCTET);
        self.run(
            Some(&ns),
            &[
                "link set lo up".into(),
                format!("addr add {addr}/24 dev eth0"),
                "link set eth0 up".into(),
                format!("neigh replace {void} lladdr {VOID_MAC} dev eth0 nud permanent"),
            ],
        )
        .map_err(|e| e.network_context(format!("cannot set up the network of namespace {ns}")))?;
        Ok(i)
    }

    /// A command that runs `program` inside host `i`'s namespace (`ip netns exec`, which execs
    /// it in place: the child's pid is the program's).
    pub fn command(&self, i: usize, program: &Path) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.arg("netns").arg("exec").arg(&self.hosts[i]).arg(program);
        cmd
    }

    /// Cuts the network between the groups: packets from a host of one group to a host of
    /// another are dropped silently, both ways. Hosts in no group keep reaching everyone. A
    /// partition replaces the one in place.
    pub fn partition(&mut self, groups: &[Vec<usize>]) -> Result<()> {
        check_groups(groups, self.hosts.len())?;
        let mut side = vec![None; self.hosts.len()];
        for (g, group) in groups.iter().enumerate() {
            for &i in group {
                side[i] = Some(g);
            }
        }
        let void = self.addr(VOID_OCTET);
        // Recorded first, so that a heal also undoes a partition that failed half-way.
        self.partition = Some(groups.to_vec());
        for i in 0..self.hosts.len() {
            let mut commands = vec![format!("route flush proto {PARTITION_PROTO}")];
            if let Some(mine) = side[i] {
                for (j, theirs) in side.iter().enumerate() {
                    if theirs.is_some_and(|t| t != mine) {
                        commands.push(format!(
                            "route replace {}/32 via {void} dev eth0 proto {PARTITION_PROTO}",
                            self.host_addr(j)
                        ));
                    }
                }
            }
            let ns = self.hosts[i].clone();
            self.run(Some(&ns), &commands)
                .map_err(|e| e.network_context(format!("cannot cut the network of namespace {ns}")))?;
        }
        Ok(())
    }

    /// Removes the partition: every host reaches every other again (held packets are then
    /// delivered by their senders' retransmissions). Nothing happens without one.
    pub fn heal(&mut self) -> Result<()> {
        if self.partition.is_none() {
            return Ok(());
        }
        let mut errors = Vec::new();
        for ns in self.hosts.clone() {
            if let Err(e) = self.run(Some(&ns), &[format!("route flush proto {PARTITION_PROTO}")]) {
                errors.push(format!("{ns}: {e}"));
            }
        }
        if !errors.is_empty() {
            return Err(Error::Network(format!(
                "cannot heal the partition: {}",
                errors.join("; ")
            )));
        }
        self.partition = None;
        Ok(())
    }

    /// The groups of the partition in place, if any.
    pub fn partitioned(&self) -> Option<&[Vec<usize>]> {
        self.partition.as_deref()
    }

    fn bridge(&self) -> String {
        format!("{}b", self.id)
    }

    fn addr(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], self.subnet, last)
    }

    /// Runs `commands` with `ip -batch`, in namespace `ns` if given; fails on the first error.
    fn run(&self, ns: Option<&str>, commands: &[String]) -> Result<()> {
        run_ip(&self.ip, ns, commands, false)
    }

    /// Kills what still runs in the namespaces, deletes them and the bridge. Best effort.
    fn teardown(&mut self) {
        for ns in &self.hosts {
            kill_namespace_processes(&self.ip, ns);
        }
        let mut commands: Vec<String> = self.hosts.iter().map(|ns| format!("netns del {ns}")).collect();
        commands.push(format!("link del {}", self.bridge()));
        let _ = run_ip(&self.ip, None, &commands, true);
        self.hosts.clear();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Checks that `groups` are at least two, non-empty, disjoint, and name hosts `0..hosts`.
///
/// # Errors
/// [`Error::InvalidPartition`], saying which rule the groups break.
pub fn check_groups(groups: &[Vec<usize>], hosts: usize) -> Result<()> {
    let invalid = |why: String| Err(Error::InvalidPartition(why));
    if groups.len() < 2 {
        return invalid(format!(
            "a partition needs at least two groups of nodes, not {}",
            groups.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for group in groups {
        if group.is_empty() {
            return invalid("a group of a partition names no node".to_string());
        }
        for &i in group {
            if i >= hosts {
                return invalid(format!("node {i} does not exist ({hosts} nodes)"));
            }
            if !seen.insert(i) {
                return invalid(format!("node {i} is in two groups of the partition"));
            }
        }
    }
    Ok(())
}

/// Runs `ip [-n NS] [-force] -batch -` with `commands` on its standard input.
fn run_ip(ip: &Path, ns: Option<&str>, commands: &[String], force: bool) -> Result<()> {
    let mut cmd = Command::new(ip);
    if let Some(ns) = ns {
        cmd.arg("-n").arg(ns);
    }
    if force {
        cmd.arg("-force");
    }
    cmd.arg("-batch")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Network(format!("cannot run {}: {e}", ip.display())))?;
    let mut input = commands.join("\n");
    input.push('\n');
    let written = child.stdin.take().expect("piped").write_all(input.as_bytes());
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Network(format!("cannot wait for ip: {e}")))?;
    if !out.status.success() || written.is_err() {
        return Err(Error::Network(format!(
            "`ip{} -batch` failed ({}): {}; commands: {}",
            ns.map(|n| format!(" -n {n}")).unwrap_or_default(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            commands.join("; ")
        )));
    }
    Ok(())
}

/// Output of `ip ARGS`, or `None` if it fails.
fn ip_output(ip: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(ip).args(args).stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// SIGKILLs every process inside namespace `ns`.
fn kill_namespace_processes(ip: &Path, ns: &str) {
    let Some(pids) = ip_output(ip, &["netns", "pids", ns]) else {
        return;
    };
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<libc::pid_t>().ok())
    {
        // SAFETY: kill(2) has no memory-safety preconditions. The pid was just listed inside
        // our own namespace, where only processes we started run.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// The creator's pid in a name this module made (`ck` + 6 hex digits of the pid + 3 of a
/// counter, then `-i` for a namespace or `b` for a bridge), or `None` for any other name.
fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("ck")?;
    let (id, suffix) = (rest.get(..9)?, rest.get(9..)?);
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let ours = suffix == "b"
        || suffix
            .strip_prefix('-')
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()));
    if !ours {
        return None;
    }
    u32::from_str_radix(&id[..6], 16).ok()
}

/// Deletes the namespaces and bridges this module made in processes that no longer run.
fn remove_leftovers(ip: &Path) {
    let dead = |name: &str| creator_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
    let mut commands = Vec::new();
    if let Some(list) = ip_output(ip, &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if dead(ns) {
                kill_namespace_processes(ip, ns);
                commands.push(format!("netns del {ns}"));
            }
        }
    }
    if let Some(list) = ip_output(ip, &["-o", "link", "show", "type", "bridge"]) {
        // "7: ck00a1b2003b: <BROADCAST,...> ..."
        for name in list.lines().filter_map(|l| l.split(": ").nth(1)) {
            if dead(name) {
                commands.push(format!("link del {name}"));
            }
        }
    }
    if !commands.is_empty() {
        let _ = run_ip(ip, None, &commands, true);
    }
}

/// An X for 10.78.X.0/24 that no address or route of the root namespace uses, starting from
/// one derived from the pid and `n` so that processes in parallel start apart.
fn free_subnet(ip: &Path, n: u32) -> Result<u8> {
    let used = [
        ip_output(ip, &["-4", "-o", "addr", "show"]).unwrap_or_default(),
        ip_output(ip, &["-4", "route", "show", "table", "all"]).unwrap_or_default(),
    ]
    .join("\n");
    let start = (std::process::id().wrapping_mul(31).wrapping_add(n * 7)) % 250;
    (0..250)
        .map(|k| ((start + k) % 250 + 1) as u8)
        .find(|x| {
            let prefix = format!("{}.{}.{x}.", NET_PREFIX[0], NET_PREFIX[1]);
            !used.contains(&prefix)
        })
        .ok_or_else(|| Error::Network("no free 10.78.X.0/24 subnet for a cluster network".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_are_claimed() {
        assert_eq!(creator_pid("ck00a1b2003-0"), Some(0x00a1b2));
        assert_eq!(creator_pid("ck00a1b2003-17"), Some(0x00a1b2));
        assert_eq!(creator_pid("ck00a1b2003b"), Some(0x00a1b2));
        for other in [
            "ckv-123-h1",
            "ck00a1b2003h0",
            "ck00a1b2003-",
            "ck00a1b2003-x",
            "ckzzzzzz003b",
            "docker0",
        ] {
            assert_eq!(creator_pid(other), None, "{other}");
        }
    }

    #[test]
    fn groups_are_checked() {
        assert!(check_groups(&[vec![0, 1], vec![2]], 3).is_ok());
        assert!(
            check_groups(&[vec![0], vec![2]], 3).is_ok(),
            "node 1 may stay out"
        );
        let err = |g: &[Vec<usize>]| check_groups(g, 3).unwrap_err().to_string();
        assert!(err(&[vec![0, 1, 2]]).contains("at least two groups"));
        assert!(err(&[vec![0], vec![]]).contains("names no node"));
        assert!(err(&[vec![0], vec![3]]).contains("node 3 does not exist"));
        assert!(err(&[vec![0, 1], vec![1]]).contains("node 1 is in two groups"));
    }
}
