//! The node's logs (`chordkv node --log-format --log-level`, `RUST_LOG`): real node processes
//! whose stderr is read back. JSON lines parse and carry the node's span; `--log-level warn`
//! leaves out info lines unless `RUST_LOG` says otherwise; a stranger knocking 200 times is
//! logged a bounded number of times, with the rest counted in `suppressed`.
//!
//! Run with `cargo build --bins && cargo test -p chordkv-tests --test logs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chordkv_client::Client;
use chordkv_tests::{
    chordkv_bin, poll_until, scratch_dir, signal, ChildGuard, CliCluster, CONVERGE_TIMEOUT, NODE_ARGS,
    REQUEST_TIMEOUT, SIGTERM,
};
use serde_json::Value;

/// Connections a stranger opens, each sending bytes that are not a frame.
const STRANGER_CONNECTIONS: usize = 200;
/// Most further knocks, one every [`KNOCK_PAUSE`], before the node's next warning must have
/// come (its window is `chordkv_server::log::REPEAT_WINDOW_MS`, 10 s).
const MAX_LATER_KNOCKS: usize = 120;
const KNOCK_PAUSE: Duration = Duration::from_millis(250);
/// How long a node gets to leave and exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
}

/// A node process listening on `listen`, its stderr in `log`.
struct Node {
    guard: ChildGuard,
    listen: SocketAddr,
    log: PathBuf,
}

impl Node {
    /// Starts `chordkv node` with `args` (after [`NODE_ARGS`]), `RUST_LOG` set to `rust_log`
    /// or removed.
    fn start(dir: &Path, name: &str, args: &[&str], rust_log: Option<&str>) -> Node {
        let listen = free_addr();
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(chordkv_bin());
        cmd.args(["node", "--listen", &listen.to_string()])
            .args(NODE_ARGS)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"));
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let guard = ChildGuard::new(cmd.spawn().expect("start a node"));
        Node { guard, listen, log }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has a line containing `what`.
    fn wait_for(&self, what: &str) {
        poll_until(CONVERGE_TIMEOUT, what, || {
            self.text().contains(what).then_some(())
        });
    }

    /// SIGTERM (a graceful leave), then waits for the exit; the whole log.
    fn stop(mut self) -> String {
        signal(self.guard.pid(), SIGTERM).expect("SIGTERM");
        let status = self.guard.wait_timeout(EXIT_TIMEOUT).expect("the node exits");
        assert!(status.success(), "{status}; log:\n{}", self.text());
        self.text()
    }
}

/// Every line of `text` as JSON; fails on one that is not an object.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object(), "not an object: {l}");
            v
        })
        .collect()
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

/// Checks the shape of one JSON log line of the node at `addr`: a level, a target, a message
/// among its fields, the node span with its address and id.
fn check_json_line(line: &Value, addr: SocketAddr) {
    let level = line["level"]
        .as_str()
        .unwrap_or_else(|| panic!("no level: {line}"));
    assert!(
        ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
        "{line}"
    );
    assert!(
        line["target"].as_str().is_some_and(|t| t.starts_with("chordkv")),
        "{line}"
    );
    assert!(!message(line).is_empty(), "no message: {line}");
    assert_eq!(line["span"]["name"], "node", "{line}");
    assert_eq!(line["span"]["addr"], addr.to_string(), "{line}");
    assert!(
        line["span"]["id"].as_str().is_some_and(|id| id.len() == 8),
        "{line}"
    );
}

#[test]
fn json_lines_carry_their_level_fields_and_the_node_span() {
    let dir = scratch_dir("logs_json");
    let json_debug = ["--log-format", "json", "--log-level", "debug"];
    let a = Node::start(&dir, "a", &json_debug, None);
    a.wait_for("listening");
    let join = a.listen.to_string();
    let b = Node::start(&dir, "b", &[&json_debug[..], &["--join", &join]].concat(), None);
    b.wait_for("joined the ring");
    let mut client = Client::connect(b.listen, REQUEST_TIMEOUT).expect("connect to b");
    for i in 0..10 {
        client.put(format!("k{i}"), "v").expect("PUT");
    }
    drop(client);
    let b_addr = b.listen;
    let b_log = b.stop();
    let a_addr = a.listen;
    let a_log = a.stop();

    for (addr, text) in [(a_addr, &a_log), (b_addr, &b_log)] {
        let lines = json_lines(text);
        assert!(!lines.is_empty(), "{addr} logged nothing");
        for line in &lines {
            check_json_line(line, addr);
        }
        let has = |level: &str, what: &str| {
            lines
                .iter()
                .any(|l| l["level"] == level && message(l).contains(what))
        };
        assert!(has("INFO", "listening"), "{addr}: {text}");
        assert!(has("INFO", "left the ring"), "{addr}: {text}");
        assert!(has("DEBUG", "connection accepted"), "{addr}: {text}");
    }
    // Fields are fields, not text: the joining node names its successor.
    let joined = json_lines(&b_log)
        .into_iter()
        .find(|l| message(l) == "joined the ring")
        .expect("b joined");
    assert_eq!(joined["fields"]["successor"], a_addr.to_string(), "{joined}");
}

#[test]
fn chordkv_cluster_passes_the_log_flags_to_its_nodes() {
    let mut cluster = CliCluster::start("logs_cluster", &["--nodes", "2", "--log-format", "json"]);
    let addrs = cluster.ready();
    assert!(cluster.stop().success(), "{}", cluster.stderr());
    // The launcher's own lines follow the flags too.
    assert!(!json_lines(&cluster.stderr()).is_empty());
    let dir = cluster.stderr_path.parent().expect("the log directory");
    for (i, addr) in addrs.iter().enumerate() {
        let addr: SocketAddr = addr.parse().expect("an address");
        let log = dir.join(format!("node-{i}-{}.log", addr.port()));
        let text = std::fs::read_to_string(&log).expect("a node log");
        // The launcher's header line, then the node's own lines.
        let node_lines: String = text
            .lines()
            .filter(|l| !l.starts_with("=== "))
            .map(|l| format!("{l}\n"))
            .collect();
        let lines = json_lines(&node_lines);
        assert!(lines.iter().any(|l| message(l) == "left the ring"), "{text}");
        for line in &lines {
            check_json_line(line, addr);
        }
    }
}

#[test]
fn warn_level_prints_no_info_lines_unless_rust_log_says_so() {
    let dir = scratch_dir("logs_levels");
    let quiet = Node::start(&dir, "quiet", &["--log-level", "warn"], None);
    let loud = Node::start(&dir, "loud", &["--log-level", "warn"], Some("debug"));
    // A warning from each, so that each has logged something before it stops.
    for node in [&quiet, &loud] {
        poll_until(CONVERGE_TIMEOUT, "the node to listen", || {
            TcpStream::connect(node.listen).ok().map(drop)
        });
        knock(node.listen);
        node.wait_for("protocol error");
    }
    let quiet = quiet.stop();
    assert!(!quiet.contains(" INFO ") && !quiet.contains(" DEBUG "), "{quiet}");
    assert!(
        !quiet.contains("listening") && !quiet.contains("left the ring"),
        "{quiet}"
    );
    assert!(quiet.lines().all(|l| l.contains(" WARN ")), "{quiet}");
    let loud = loud.stop();
    assert!(loud.contains(" INFO ") && loud.contains("listening"), "{loud}");
    assert!(
        loud.contains(" DEBUG ") && loud.contains("connection closed"),
        "{loud}"
    );
}

/// Opens a connection to `addr`, sends bytes that are not a frame, and reads until the node
/// closes it (by then it has logged what it had to).
fn knock(addr: SocketAddr) {
    knock_with(addr, b"GET / HTTP/1.1\r\nHost: chordkv\r\n\r\n");
}

/// [`knock`] with `bytes`.
fn knock_with(addr: SocketAddr, bytes: &[u8]) {
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).expect("connect");
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .expect("a read timeout");
    stream.write_all(bytes).expect("send the bytes");
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the node did not close the connection: {e}"),
        }
    }
}

/// The warnings about malformed frames in a JSON log, with their `suppressed` counts (0 when
/// absent).
fn malformed_frame_warnings(text: &str) -> Vec<u64> {
    json_lines(text)
        .iter()
        .filter(|l| l["level"] == "WARN" && l["fields"]["kind"] == "malformed_frame")
        .map(|l| l["fields"]["suppressed"].as_u64().unwrap_or(0))
        .collect()
}

/// A node without a keyring that a keyed ring dials (a member restarted without
/// `--keyring`) says why it cannot read the connection, rather than naming a protocol version.
#[test]
fn a_node_without_a_keyring_says_a_keyed_peer_dialled_it() {
    let dir = scratch_dir("logs_keyed_peer");
    let node = Node::start(&dir, "node", &[], None);
    node.wait_for("listening");
    let mut hello = Vec::new();
    chordkv_protocol::handshake::Handshake::Hello {
        key_id: [7; chordkv_protocol::handshake::KEY_ID_BYTES],
        nonce: [9; chordkv_protocol::handshake::NONCE_BYTES],
    }
    .encode(&mut hello);
    knock_with(node.listen, &hello);
    node.wait_for("runs without one (start it with the ring's --keyring)");
    node.stop();
}

#[test]
fn a_stranger_knocking_is_logged_a_bounded_number_of_times_with_the_rest_counted() {
    let dir = scratch_dir("logs_stranger");
    let node = Node::start(&dir, "node", &["--log-format", "json"], None);
    node.wait_for("listening");
    for _ in 0..STRANGER_CONNECTIONS {
        knock(node.listen);
    }
    let after_flood = malformed_frame_warnings(&node.text());
    // One line per window of 10 s: a flood this size takes far less than 100 windows.
    assert!(
        !after_flood.is_empty() && after_flood.len() < STRANGER_CONNECTIONS / 2,
        "{} warnings for {STRANGER_CONNECTIONS} knocks",
        after_flood.len()
    );
    // Knock again until a warning carries the count of those not logged: then every knock
    // is accounted for, logged or counted.
    let mut knocks = STRANGER_CONNECTIONS;
    let mut warnings = after_flood.clone();
    for _ in 0..MAX_LATER_KNOCKS {
        if warnings.len() > after_flood.len() {
            break;
        }
        std::thread::sleep(KNOCK_PAUSE);
        knock(node.listen);
        knocks += 1;
        warnings = malformed_frame_warnings(&node.text());
    }
    assert!(
        warnings.len() > after_flood.len(),
        "no warning after the window: {warnings:?}"
    );
    assert!(*warnings.last().unwrap() > 0, "no suppressed count: {warnings:?}");
    let accounted: u64 = warnings.iter().map(|s| 1 + s).sum();
    assert_eq!(
        accounted, knocks as u64,
        "warnings (suppressed counts) {warnings:?}"
    );
    let addr = node.listen;
    for line in json_lines(&node.stop()) {
        check_json_line(&line, addr);
    }
}
