//! Helpers for the integration tests in `tests/tests/`, which run the shipped `chordkv`
//! binary as real processes on loopback.
//!
//! Cargo builds another package's binary for an integration test only if asked, so run
//!
//! ```text
//! cargo build --bins && cargo test -p chordkv-tests
//! ```
//!
//! The binary is `$CHORDKV_BIN` if set, else `target/<profile>/chordkv` next to the test
//! executable. Every cluster uses free ports, so the tests run in parallel. Waits are bounded
//! polls, never timing assertions. Node logs go to `target/tmp/chordkv-tests/`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chordkv_client::{Client, ClientError};
use chordkv_node::cluster::{ClusterSpec, LocalCluster};

/// Bound of every wait for the ring to converge or for data to settle.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of the retries of one client operation that fails with a retryable error.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of each client request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of one run of a client command of the CLI.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Arguments of every test node: a fast stabilize so that rings converge quickly.
pub const NODE_ARGS: [&str; 2] = ["--stabilize-ms", "100"];

/// The `chordkv` binary under test ([`chordkv_node::cluster::chordkv_binary`]). Panics with
/// instructions when it has not been built.
pub fn chordkv_bin() -> PathBuf {
    chordkv_node::cluster::chordkv_binary()
        .unwrap_or_else(|e| panic!("{e:#} (before `cargo test -p chordkv-tests`)"))
}

/// A fresh directory for one test's logs: `target/tmp/chordkv-tests/<name>-<pid>-<n>`.
pub fn scratch_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let bin = chordkv_bin();
    let target = bin
        .parent()
        .and_then(|profile| profile.parent())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("tmp").join("chordkv-tests").join(format!(
        "{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

/// The spec of a test cluster: `nodes` nodes on free ports with [`NODE_ARGS`], logging to a
/// scratch directory named after the test.
pub fn cluster_spec(name: &str, nodes: usize) -> ClusterSpec {
    let mut spec = ClusterSpec::new(chordkv_bin(), nodes);
    spec.node_args = NODE_ARGS.iter().map(|s| s.to_string()).collect();
    spec.log_dir = Some(scratch_dir(name));
    spec
}

/// Arguments that make a ring drop a node that stops answering and serve on without it: the
/// partition policy `available`. The tests of re-replication onto the surviving nodes use it;
/// under the default `consistent` a node that stops answering stays a member until it returns
/// or is forgotten (see `tests/tests/faults.rs`).
pub const AVAILABLE: [&str; 2] = ["--partition-policy", "available"];

/// Starts a test cluster and waits until its ring is consistent.
pub fn start_cluster(name: &str, nodes: usize) -> LocalCluster {
    start_spec(name, cluster_spec(name, nodes))
}

/// Starts the cluster `spec` describes and waits until its ring is consistent.
pub fn start_spec(name: &str, spec: ClusterSpec) -> LocalCluster {
    let nodes = spec.nodes;
    let logs = spec.log_dir.clone().expect("set by cluster_spec");
    eprintln!("{name}: node logs in {}", logs.display());
    let mut cluster = LocalCluster::start(spec).expect("start the cluster");
    let report = cluster
        .wait_consistent(CONVERGE_TIMEOUT)
        .expect("the new ring converges");
    assert_eq!(report.nodes.len(), nodes);
    cluster
}

/// The test's RNG seed: `$CHORDKV_TEST_SEED`, else the clock. Printed, so a failure can be
/// replayed.
pub fn seed(name: &str) -> u64 {
    let seed = match std::env::var("CHORDKV_TEST_SEED") {
        Ok(s) => s.parse().expect("CHORDKV_TEST_SEED is a u64"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    };
    eprintln!("{name}: seed {seed} (replay with CHORDKV_TEST_SEED={seed})");
    seed
}

/// Polls `f` until it returns `Some`, for at most `timeout`; panics naming `what` after that.
pub fn poll_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {:.1} s waiting for {what}",
            timeout.as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One connection per node, reconnected after an error that breaks it.
#[derive(Debug, Default)]
pub struct Clients {
    clients: BTreeMap<SocketAddr, Client>,
}

impl Clients {
    pub fn new() -> Clients {
        Clients::default()
    }

    /// Runs `op` on the connection to `addr`.
    pub fn with<T>(
        &mut self,
        addr: SocketAddr,
        op: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let client = match self.clients.entry(addr) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Client::connect(addr, REQUEST_TIMEOUT)?)
            }
        };
        let result = op(client);
        if result.as_ref().is_err_and(|e| e.breaks_connection()) {
            self.clients.remove(&addr);
        }
        result
    }

    /// Runs `op` on `addr`, retrying retryable errors for at most [`RETRY_TIMEOUT`]; panics
    /// on any other error, naming `what`.
    pub fn retrying<T>(
        &mut self,
        addr: SocketAddr,
        what: &str,
        mut op: impl FnMut(&mut Client) -> Result<T, ClientError>,
    ) -> T {
        let deadline = Instant::now() + RETRY_TIMEOUT;
        loop {
            match self.with(addr, &mut op) {
                Ok(v) => return v,
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("{what} through {addr} failed: {e}"),
            }
        }
    }
}

/// Held by each test of a test binary for its whole run, so that the tests of that binary
/// (each starting its own cluster) run one at a time on a 2-core machine.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A test that panicked poisons the lock; the next one may run all the same.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The value of counter `name` in a node's stats (`GET_STATS`); panics when the node reports
/// no such counter.
pub fn counter(stats: &[(String, u64)], name: &str) -> u64 {
    stats
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("the node reports no counter {name:?}: {stats:?}"))
}

/// Counters `quoted` of every node of `addrs`, one line each, for failure messages.
pub fn stats_table(clients: &mut Clients, addrs: &[SocketAddr], quoted: &[&str]) -> String {
    let mut out = String::new();
    for &addr in addrs {
        let line = match clients.with(addr, Client::stats) {
            Ok(stats) => quoted
                .iter()
                .map(|name| format!("{name}={}", counter(&stats, name)))
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => format!("no answer: {e}"),
        };
        out.push_str(&format!("\n  {addr}: {line}"));
    }
    out
}

/// The index in `cluster` of the node at `addr`; panics when no node of it has that address.
pub fn index_of(cluster: &LocalCluster, addr: SocketAddr) -> usize {
    cluster
        .addrs()
        .iter()
        .position(|a| *a == addr)
        .unwrap_or_else(|| panic!("{addr} is not a node of the cluster"))
}

/// Where the node logs of `cluster` are, for failure messages.
pub fn logs_of(cluster: &LocalCluster) -> String {
    cluster
        .spec()
        .log_dir
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_default()
}

/// A child process that is stopped when dropped (SIGTERM, then SIGKILL after 10 s), so a
/// failing test leaves nothing behind.
#[derive(Debug)]
pub struct ChildGuard {
    pub child: Child,
}

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = signal(self.child.id(), SIGTERM);
            if self.wait_timeout(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

pub const SIGTERM: i32 = 15;

/// Sends signal `sig` to process `pid` with `kill(1)` (this crate has no libc dependency).
pub fn signal(pid: u32, sig: i32) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("kill -{sig} {pid}: {status}")))
    }
}

/// Reads lines from `reader` on a thread; the receiver yields them as they come.
pub fn lines_of(reader: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// What a finished `chordkv` command printed.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs `chordkv ARGS...` to completion (killing it after [`COMMAND_TIMEOUT`]).
pub fn chordkv(args: &[&str]) -> Run {
    let mut child = Command::new(chordkv_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chordkv");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut guard = ChildGuard::new(child);
    let status = guard
        .wait_timeout(COMMAND_TIMEOUT)
        .unwrap_or_else(|| panic!("`chordkv {}` did not finish", args.join(" ")));
    Run {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Bound of the wait for a started `redis-server` to answer PING.
pub const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process on a free loopback port for the tests that run nodes with
/// `--store redis://...`. Nothing is persisted. Killed when dropped, even when the test panics.
/// Panics if `redis-server` is not installed (`tests/run-all.sh` installs it): these tests must
/// not pass by skipping.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        for _ in 0..10 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("bind a free port")
                .port();
            if let Some(child) = spawn_redis(port) {
                return RedisServer {
                    port,
                    child: Some(child),
                };
            }
        }
        panic!("redis-server did not start on any of 10 free ports");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server with SIGKILL; its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new, empty server on the same port (killing the old one if it runs).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + REDIS_START_TIMEOUT;
        loop {
            if let Some(child) = spawn_redis(self.port) {
                self.child = Some(child);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// Freezes the server (SIGSTOP): the kernel still accepts connections, nothing answers.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a server frozen by [`RedisServer::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Runs one command (arguments as given, binary-safe) on a connection of its own and
    /// returns the reply in RESP form, e.g. `":5"`, `"$-1"`, `"$3\r\nabc"`.
    pub fn command(&self, args: &[&[u8]]) -> String {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis-server");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set a read timeout");
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        s.write_all(&req).expect("send a command to redis-server");
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .expect("read a reply from redis-server");
        let line = line.trim_end().to_string();
        match line.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            Some(len) => {
                let mut body = vec![0u8; len + 2];
                reader.read_exact(&mut body).expect("read a bulk reply");
                body.truncate(len);
                format!("{line}\r\n{}", String::from_utf8_lossy(&body))
            }
            None => line,
        }
    }

    /// The live-key counter the Redis store keeps for the node advertised at `addr` (0 when
    /// the counter does not exist).
    pub fn live_keys_of(&self, addr: SocketAddr) -> u64 {
        let reply = self.command(&[b"GET", format!("ckv:{{{addr}}}:live").as_bytes()]);
        if reply == "$-1" {
            return 0;
        }
        reply
            .split_once("\r\n")
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected reply to GET: {reply:?}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `redis-server` on `port` and waits until it answers PING; `None` if it exited (the
/// port was taken).
fn spawn_redis(port: u16) -> Option<Child> {
    let mut child = match Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("redis-server not found: run tests/run-all.sh, which installs it")
        }
        Err(e) => panic!("cannot start redis-server: {e}"),
    };
    let deadline = Instant::now() + REDIS_START_TIMEOUT;
    loop {
        if redis_pings(port) {
            return Some(child);
        }
        if child.try_wait().expect("try_wait").is_some() {
            return None;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server on port {port} did not answer PING within {REDIS_START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn redis_pings(port: u16) -> bool {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// The spec of a test cluster whose nodes keep their keys in `redis` (all sharing it, each
/// under its own namespace).
pub fn redis_cluster_spec(name: &str, nodes: usize, redis: &RedisServer) -> ClusterSpec {
    let mut spec = cluster_spec(name, nodes);
    spec.node_args.extend(["--store".to_string(), redis.url()]);
    spec
}
