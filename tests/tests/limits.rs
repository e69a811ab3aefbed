//! What clients can make a node hold (issue 13): real `chordkv node` processes abused over
//! real sockets, each test printing the node's memory (VmRSS, VmSize) before and after.
//!
//! - Frame headers announcing the largest frame (576 MiB) cost only their bytes: 200 of them, under an address-space
//!   limit 1 GiB above the node's size, and the node still serves.
//! - A client over `--max-clients` is answered with Redis' words (RESP and binary); peers are
//!   not counted, and a node at its limit still takes a joining peer.
//! - A RESP client writing into a stalled store is no longer read: its writes stall in TCP
//!   flow control, not in the node's memory (a 2 MiB query buffer limit is never reached), and
//!   all complete once the store is back.
//! - Nor is one whose ready replies (1 MiB `ECHO`s) pile up behind a command waiting for that
//!   store: the replies held count against the output high-water mark.
//! - Nor is a binary client pipelining PUTs into that store, once it has
//!   `MAX_CLIENT_REQUESTS_IN_FLIGHT` requests unanswered.
//! - An unfinished command over `--client-query-buffer-limit` closes its client.
//! - `--idle-timeout-secs` closes idle clients, connections that never sent a whole frame
//!   among them, and spares a client that keeps asking and one that waits for its reply.
//!
//! Waits are bounded polls; the memory figures are printed, never asserted.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chordkv_client::Client;
use chordkv_harness::cluster::LocalCluster;
use chordkv_protocol::{Frame, Message, HEADER_BYTES, MAX_FRAME_BYTES};
use chordkv_server::store::redis::IO_TIMEOUT_MS;
use chordkv_server::{MAX_CLIENT_REQUESTS_IN_FLIGHT, OUTPUT_HIGH_WATER_BYTES, READ_BUDGET_BYTES};
use chordkv_tests::*;

/// Bound of a wait for the node to close a connection, or to read what was sent to it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The node's resident and virtual size in kB (`VmRSS`, `VmSize` of `/proc/<pid>/status`).
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmSize:"))
}

/// Prints node `i`'s memory, labelled `when`; returns it (kB).
fn report_memory(name: &str, cluster: &LocalCluster, i: usize, when: &str) -> (u64, u64) {
    let pid = cluster.pid(i).expect("the node is running");
    let (rss, size) = memory_kb(pid);
    eprintln!(
        "{name}: node {i} (pid {pid}) {when}: VmRSS {:.1} MiB, VmSize {:.1} MiB",
        rss as f64 / 1024.0,
        size as f64 / 1024.0
    );
    (rss, size)
}

/// The one node of a single-node ring started with `extra` arguments (and a RESP port with
/// `resp`).
fn one_node(name: &str, resp: bool, extra: &[&str]) -> LocalCluster {
    let mut spec = with_args(cluster_spec(name, 1), extra);
    spec.resp = resp;
    start_spec(name, spec)
}

fn log_of(cluster: &LocalCluster, i: usize) -> String {
    cluster
        .log_path(i)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

/// Whether a read error means the peer closed the connection.
fn is_closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

/// Reads from `stream` until the node closes it (EOF or reset), for at most `timeout`;
/// returns what came before the close, or `None` when it stayed open.
fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).expect("a read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if is_closed(&e) => return Some(got),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("reading until the node closes the connection: {e}"),
        }
    }
}

/// Sends `PING` on a new RESP connection to `addr`; the connection if the node answered
/// `+PONG`, else what it answered (the node may refuse a client at its limit).
fn resp_ping(addr: SocketAddr) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT)).expect("a read timeout");
    s.write_all(b"PING\r\n").map_err(|e| format!("send: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e} after {:?}", String::from_utf8_lossy(&got))),
        }
    }
    if got == b"+PONG\r\n" {
        Ok(s)
    } else {
        Err(String::from_utf8_lossy(&got).into_owned())
    }
}

/// A RESP client of `addr` that got `+PONG`, polled for: a client that just hung up may still
/// count against the limit until the node sees it gone.
fn resp_client(addr: SocketAddr, what: &str) -> TcpStream {
    poll_until(CONVERGE_TIMEOUT, what, || resp_ping(addr).ok())
}

/// The node's side of the loopback connections from the ports `clients` to port `server`, as
/// `(client port, bytes received and not yet read by the node)`, from `/proc/net/tcp`.
fn unread_at_server(server: u16, clients: &[u16]) -> Vec<(u16, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next().unwrap_or(""), 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, queues) = (port(f.get(1)?)?, port(f.get(2)?)?, f.get(4)?);
            let rx = u64::from_str_radix(queues.split(':').nth(1)?, 16).ok()?;
            (local == server && clients.contains(&remote)).then_some((remote, rx))
        })
        .collect()
}

/// The send and receive queues (`tx_queue`, `rx_queue` of `/proc/net/tcp`) of the loopback
/// socket from port `local` to port `remote`.
fn tcp_queues(local: u16, remote: u16) -> Option<(u64, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next().unwrap_or(""), 16).ok();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if (port(f.get(1)?)?, port(f.get(2)?)?) != (local, remote) {
            return None;
        }
        let (tx, rx) = f.get(4)?.split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

/// Where the `written` bytes of a stalled writer on `stream` are: still in the client's socket
/// (not yet acknowledged by the node's), in the node's socket (received, not read), and read by
/// the node (the rest). Bytes received but not yet acknowledged count in both sockets, so
/// `read_by_node` may be low by up to that much (some 100 KiB seen).
#[derive(Debug)]
struct Whereabouts {
    in_client_socket: u64,
    unread_by_node: u64,
    read_by_node: u64,
}

fn whereabouts(stream: &TcpStream, written: u64) -> Whereabouts {
    let (client, node) = (
        stream.local_addr().expect("a local address").port(),
        stream.peer_addr().expect("a peer address").port(),
    );
    let (in_client_socket, _) = tcp_queues(client, node).expect("the client's socket in /proc/net/tcp");
    let (_, unread_by_node) = tcp_queues(node, client).expect("the node's socket in /proc/net/tcp");
    Whereabouts {
        in_client_socket,
        unread_by_node,
        read_by_node: written.saturating_sub(in_client_socket + unread_by_node),
    }
}

/// A thread writing the chunks `next` makes to `stream` until it makes none, counting the bytes
/// the socket took in `written`. A write blocked for [`CONVERGE_TIMEOUT`] fails.
fn spawn_writer(
    mut stream: TcpStream,
    written: Arc<AtomicU64>,
    mut next: impl FnMut() -> Option<Vec<u8>> + Send + 'static,
) -> JoinHandle<Result<(), String>> {
    stream
        .set_write_timeout(Some(CONVERGE_TIMEOUT))
        .expect("a write timeout");
    std::thread::spawn(move || {
        while let Some(chunk) = next() {
            let mut at = 0;
            while at < chunk.len() {
                match stream.write(&chunk[at..]) {
                    Ok(n) => {
                        at += n;
                        written.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(format!(
                            "write after {} bytes: {e}",
                            written.load(Ordering::SeqCst)
                        ))
                    }
                }
            }
        }
        Ok(())
    })
}

/// Waits until the writer counting in `written` stalls: nothing more taken over two rounds of
/// polls. Returns the bytes it wrote (all of them if it finished).
fn until_the_writer_stalls(written: &AtomicU64) -> u64 {
    let round = POLL_PAUSE * 5;
    let mut last = (0, 0); // (bytes written, rounds unchanged)
    poll_until(CONVERGE_TIMEOUT, "the writer to stall", || {
        std::thread::sleep(round);
        let now = written.load(Ordering::SeqCst);
        last = if now == last.0 {
            (now, last.1 + 1)
        } else {
            (now, 0)
        };
        (now > 0 && last.1 >= 2).then_some(now)
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// An 18-byte header of a PUT announcing a payload of `MAX_FRAME_BYTES` (576 MiB), a valid
/// header that only says more bytes are coming.
fn header_announcing_the_largest_frame(request_id: u64) -> Vec<u8> {
    let frame = Frame::new(
        request_id,
        Message::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        },
    );
    let mut header = frame.to_bytes().expect("a PUT encodes")[..HEADER_BYTES].to_vec();
    header[14..18].copy_from_slice(&(MAX_FRAME_BYTES as u32).to_be_bytes());
    assert_eq!(
        chordkv_protocol::frame::check(&header),
        Ok(None),
        "a valid header of an unfinished frame"
    );
    header
}

#[test]
fn headers_announcing_the_largest_frame_cost_only_their_bytes() {
    let _one = one_at_a_time();
    let name = "limits_headers";
    const CONNECTIONS: usize = 200;
    let mut cluster = one_node(name, false, &[]);
    let addr = cluster.addr(0);
    let pid = cluster.pid(0).expect("running");

    // Address space: what the node has now plus 1 GiB. Reserving the 576 MiB each header
    // announces would take 200 x 576 MiB = 112 GiB, and the allocation would fail (abort).
    let (_, size_kb) = report_memory(name, &cluster, 0, "before the headers");
    let limit = size_kb * 1024 + (1 << 30);
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit reads the struct we pass; the old limit is not asked for.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_AS, &rl, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    eprintln!("{name}: node address space limited to {} MiB", limit >> 20);

    let mut streams = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(&header_announcing_the_largest_frame(i as u64))
            .expect("send a header");
        streams.push(s);
    }
    // Every header has been read by the node (nothing waits in its sockets), or it died.
    let ports: Vec<u16> = streams
        .iter()
        .map(|s| s.local_addr().expect("a local address").port())
        .collect();
    let read_all = poll_until(CLOSE_TIMEOUT, "the node to read every header", || {
        if !cluster.is_running(0) {
            return Some(false);
        }
        let unread = unread_at_server(addr.port(), &ports);
        (unread.len() == CONNECTIONS && unread.iter().all(|&(_, rx)| rx == 0)).then_some(true)
    });
    assert!(
        read_all && cluster.is_running(0),
        "the node died reading {CONNECTIONS} headers announcing 32 MiB; log:\n{}",
        log_of(&cluster, 0)
    );
    report_memory(name, &cluster, 0, &format!("with {CONNECTIONS} headers read"));

    // The node serves a normal client, the header-only connections still open.
    let mut client = Client::connect(addr, REQUEST_TIMEOUT).expect("the node accepts a client");
    client.put("after-headers", "served").expect("PUT");
    let got = client.get("after-headers").expect("GET");
    assert_eq!(got.value.as_deref(), Some(&b"served"[..]));
    assert!(cluster.is_running(0), "the node is alive");
    report_memory(name, &cluster, 0, "after PUT/GET");
    drop(streams);
}

/// `INFO chordkv` over a RESP connection the test holds.
fn resp_info(stream: &mut TcpStream) -> String {
    stream.write_all(b"INFO chordkv\r\n").expect("send INFO");
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("the INFO reply");
    let len: usize = line
        .trim_end()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("INFO answered {line:?}"));
    let mut body = vec![0u8; len + 2];
    reader.read_exact(&mut body).expect("the INFO body");
    String::from_utf8_lossy(&body[..len]).into_owned()
}

#[test]
fn a_client_over_max_clients_gets_redis_words() {
    let _one = one_at_a_time();
    let name = "limits_max_clients";
    let mut spec = with_args(cluster_spec(name, 2), &["--max-clients", "3"]);
    spec.resp = true;
    let mut cluster = start_spec(name, spec);
    let resp = cluster.resp_addr(0).expect("a RESP port");
    report_memory(name, &cluster, 0, "before the clients");

    // Node 1's connection to node 0 is a peer's: three clients still fit.
    let mut held: Vec<TcpStream> = (0..3)
        .map(|i| resp_client(resp, &format!("RESP client {i} to get +PONG")))
        .collect();

    // A fourth RESP client: Redis' words, then the close.
    let mut fourth = TcpStream::connect(resp).expect("connect");
    let got = read_until_closed(&mut fourth, CLOSE_TIMEOUT).expect("the node closes the fourth client");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "-ERR max number of clients reached\r\n"
    );
    // A binary client: the same words in an error, on its first request.
    let mut binary = Client::connect(cluster.addr(0), REQUEST_TIMEOUT).expect("connect");
    let err = binary.get("k").expect_err("a client over the limit is refused");
    assert!(
        err.to_string().contains("max number of clients reached"),
        "the binary client got: {err}"
    );
    drop(binary);
    // The three still get answers.
    for s in &mut held {
        s.write_all(b"PING\r\n").expect("send");
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).expect("+PONG");
        assert_eq!(&buf, b"+PONG\r\n");
    }
    report_memory(name, &cluster, 0, "at the limit");

    // A peer joining through the full node is not refused: node 2 joins via node 0, and
    // node 0's own view (INFO on a held connection) takes it in.
    let new = cluster.add_node().expect("a node joins through the full node");
    let new_addr = cluster.addr(new).to_string();
    poll_until(CONVERGE_TIMEOUT, "node 0 to see the joined node", || {
        resp_info(&mut held[0]).contains(&new_addr).then_some(())
    });

    // One client leaves: the ring is consistent (the walk takes the free place), and then a
    // new client gets in.
    drop(held.pop());
    let ring = converge(&mut cluster, "the ring with a node that joined a full node");
    assert_eq!(ring.nodes.len(), 3);
    held.push(resp_client(resp, "a new RESP client to get in once one left"));
    assert!(log_of(&cluster, 0).contains("max number of clients reached (3)"));
    report_memory(name, &cluster, 0, "after");
}

/// Bytes of SET commands the stalled-store test sends at most.
const STALLED_TOTAL_BYTES: u64 = 32 * 1024 * 1024;
/// The stalled-store node's `--client-query-buffer-limit`: the client's input must wait in
/// the socket, not in the node, so a small limit is never reached (one read budget, 1 MiB,
/// and part of a command is the most the node should hold).
const STALLED_QUERY_BUFFER_BYTES: &str = "2097152";
/// Bytes of each SET's value in that test.
const STALLED_VALUE_BYTES: usize = 100;

/// `SET k<i> <value>` in RESP.
fn set_command(i: u64, value: &[u8]) -> Vec<u8> {
    let key = format!("k{i}");
    let mut cmd = format!(
        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
        key.len(),
        value.len()
    )
    .into_bytes();
    cmd.extend_from_slice(value);
    cmd.extend_from_slice(b"\r\n");
    cmd
}

/// One node keeping its keys in a fresh redis-server, with RESP and `--client-query-buffer-limit
/// limit`, checked to store a key (a SET answered +OK) before a test stalls the store: the
/// redis-server, the cluster and the node's RESP address.
fn resp_node_on_redis(name: &str, limit: &str) -> (RedisServer, LocalCluster, SocketAddr) {
    let redis = RedisServer::start();
    let mut spec = with_args(
        redis_cluster_spec(name, 1, &redis),
        // The query buffer must hold a SET of the longest value (the ECHOs' 1 MiB).
        &[
            "--client-query-buffer-limit",
            limit,
            "--max-value-bytes",
            "1048576",
        ],
    );
    spec.resp = true;
    let cluster = start_spec(name, spec);
    let resp = cluster.resp_addr(0).expect("a RESP port");
    let mut warm = resp_client(resp, "a RESP client");
    warm.write_all(&set_command(u64::MAX, b"warm")).expect("send");
    let mut buf = [0u8; 5];
    warm.read_exact(&mut buf).expect("a reply");
    assert_eq!(&buf, b"+OK\r\n");
    (redis, cluster, resp)
}

/// What the reader of the stalled-store test saw: replies `+OK`, error replies (the first
/// few quoted), and whether the node closed the connection.
#[derive(Debug, Default)]
struct Replies {
    ok: u64,
    errors: u64,
    first_errors: Vec<String>,
    closed: Option<String>,
}

#[test]
fn a_client_writing_into_a_stalled_store_is_not_read() {
    let _one = one_at_a_time();
    let name = "limits_stalled_store";
    let (redis, mut cluster, resp) = resp_node_on_redis(name, STALLED_QUERY_BUFFER_BYTES);

    let value = vec![b'v'; STALLED_VALUE_BYTES];
    let command_bytes = set_command(0, &value).len() as u64; // k0: the shortest
    let commands = STALLED_TOTAL_BYTES / (command_bytes + 6); // keys up to 7 digits
    let total: u64 = (0..commands).map(|i| set_command(i, &value).len() as u64).sum();
    let (rss_before, _) = report_memory(name, &cluster, 0, "before the writes");

    redis.pause();
    let stream = TcpStream::connect(resp).expect("connect");
    let written = Arc::new(AtomicU64::new(0));
    let replied = Arc::new(AtomicU64::new(0));
    let writer = {
        let mut i = 0;
        spawn_writer(
            stream.try_clone().expect("clone the stream"),
            Arc::clone(&written),
            move || {
                let mut chunk = Vec::with_capacity(256 * 1024);
                while i < commands && chunk.len() < 64 * 1024 {
                    chunk.extend_from_slice(&set_command(i, &value));
                    i += 1;
                }
                (!chunk.is_empty()).then_some(chunk)
            },
        )
    };
    let reader = {
        let stream = stream.try_clone().expect("clone the stream");
        let replied = Arc::clone(&replied);
        std::thread::spawn(move || {
            let mut replies = Replies::default();
            let mut lines = BufReader::with_capacity(256 * 1024, stream);
            let mut line = Vec::new();
            while replies.ok + replies.errors < commands {
                line.clear();
                match lines.read_until(b'\n', &mut line) {
                    Ok(0) => {
                        replies.closed = Some("EOF".into());
                        break;
                    }
                    Ok(_) if line == b"+OK\r\n" => replies.ok += 1,
                    Ok(_) => {
                        replies.errors += 1;
                        if replies.first_errors.len() < 5 {
                            replies
                                .first_errors
                                .push(String::from_utf8_lossy(&line).trim_end().to_string());
                        }
                    }
                    Err(e) => {
                        replies.closed = Some(e.to_string());
                        break;
                    }
                }
                replied.fetch_add(1, Ordering::Relaxed);
            }
            replies
        })
    };

    // The writer stalls: nothing more is taken over two rounds of polls, well below the total.
    let stalled_at = until_the_writer_stalls(&written);
    eprintln!(
        "{name}: the writer stalled after {:.1} MiB of {:.1} MiB ({} replies so far)",
        stalled_at as f64 / (1 << 20) as f64,
        total as f64 / (1 << 20) as f64,
        replied.load(Ordering::Relaxed)
    );
    if writer.is_finished() {
        panic!(
            "the writer stopped while the store was stalled (the node closed its connection?): \
             {:?}; log:\n{}",
            writer.join(),
            log_of(&cluster, 0)
        );
    }
    let (rss_stalled, _) = report_memory(name, &cluster, 0, "with the writer stalled");
    assert!(
        stalled_at < total / 2,
        "the node took {stalled_at} of {total} bytes from a client whose commands wait for a \
         stalled store"
    );
    eprintln!(
        "{name}: node RSS grew {:.1} MiB while the client wrote {:.1} MiB",
        (rss_stalled as f64 - rss_before as f64) / 1024.0,
        stalled_at as f64 / (1 << 20) as f64
    );

    // The store is back: every write goes in and gets its reply.
    redis.resume();
    let wrote = writer.join().expect("the writer thread");
    assert_eq!(wrote, Ok(()), "the writer");
    let replies = reader.join().expect("the reader thread");
    eprintln!("{name}: replies {replies:?}");
    assert_eq!(replies.closed, None, "the node closed the connection");
    assert_eq!(replies.ok + replies.errors, commands);
    report_memory(name, &cluster, 0, "after the writes");
    assert!(cluster.is_running(0));
    let mut check = resp_client(resp, "a RESP client after the writes");
    check
        .write_all(format!("GET k{}\r\n", commands - 1).as_bytes())
        .expect("send");
    let mut got = vec![0u8; format!("${STALLED_VALUE_BYTES}\r\n").len() + STALLED_VALUE_BYTES + 2];
    check.read_exact(&mut got).expect("the GET reply");
    let want = [
        format!("${STALLED_VALUE_BYTES}\r\n").into_bytes(),
        vec![b'v'; STALLED_VALUE_BYTES],
        b"\r\n".to_vec(),
    ]
    .concat();
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
}

/// Bytes of each `ECHO` argument in the held-replies test.
const ECHO_BYTES: usize = 1024 * 1024;
/// That node's `--client-query-buffer-limit`: a command begun (1 MiB) and one read budget
/// (1 MiB) are the most of the client's input it should hold, so 4 MiB is never reached.
const HELD_REPLIES_QUERY_BUFFER_BYTES: &str = "4194304";
/// `ECHO`s sent behind the waiting SET at most (300 MiB).
const ECHOES: u64 = 300;

/// The argument of the `i`th `ECHO`: its number, then one letter (so that a reply out of
/// order, or another's, is seen).
fn echo_payload(i: u64) -> Vec<u8> {
    let mut payload = vec![b'a' + (i % 26) as u8; ECHO_BYTES];
    let tag = format!("echo {i:06} ");
    payload[..tag.len()].copy_from_slice(tag.as_bytes());
    payload
}

/// `ECHO <payload>` in RESP.
fn echo_command(payload: &[u8]) -> Vec<u8> {
    [
        format!("*2\r\n$4\r\nECHO\r\n${}\r\n", payload.len()).as_bytes(),
        payload,
        b"\r\n",
    ]
    .concat()
}

/// What the reader of the held-replies test saw: the SET's reply, the `ECHO`s answered with
/// their own argument in order, and what went wrong, if anything.
#[derive(Debug, Default)]
struct EchoReplies {
    set: Option<String>,
    echoes: u64,
    problem: Option<String>,
}

#[test]
fn replies_behind_a_stalled_command_do_not_pile_up() {
    let _one = one_at_a_time();
    let name = "limits_held_replies";
    let (redis, mut cluster, resp) = resp_node_on_redis(name, HELD_REPLIES_QUERY_BUFFER_BYTES);

    const SET: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";
    let echo_command_bytes = echo_command(&echo_payload(0)).len() as u64;
    let total = SET.len() as u64 + ECHOES * echo_command_bytes;
    let (rss_before, _) = report_memory(name, &cluster, 0, "before the commands");

    // One SET that waits for the paused store, then 1 MiB ECHOs, each answered at once and
    // held behind it.
    redis.pause();
    let paused = Instant::now();
    let stream = TcpStream::connect(resp).expect("connect");
    let written = Arc::new(AtomicU64::new(0));
    let replied = Arc::new(AtomicU64::new(0));
    let writer = {
        let mut next = 0;
        spawn_writer(
            stream.try_clone().expect("clone the stream"),
            Arc::clone(&written),
            move || {
                let chunk = match next {
                    0 => SET.to_vec(),
                    i if i <= ECHOES => echo_command(&echo_payload(i - 1)),
                    _ => return None,
                };
                next += 1;
                Some(chunk)
            },
        )
    };
    let reader = {
        let stream = stream.try_clone().expect("clone the stream");
        stream
            .set_read_timeout(Some(CONVERGE_TIMEOUT))
            .expect("a read timeout");
        let replied = Arc::clone(&replied);
        std::thread::spawn(move || {
            let mut replies = EchoReplies::default();
            let mut lines = BufReader::with_capacity(256 * 1024, stream);
            let mut line = Vec::new();
            let header = format!("${ECHO_BYTES}\r\n").into_bytes();
            let mut body = vec![0u8; ECHO_BYTES + 2];
            for i in 0..=ECHOES {
                line.clear();
                match lines.read_until(b'\n', &mut line) {
                    Ok(0) => replies.problem = Some(format!("EOF before reply {i}")),
                    Ok(_) if i == 0 => replies.set = Some(String::from_utf8_lossy(&line).trim_end().into()),
                    Ok(_) if line != header => {
                        let quoted = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
                        replies.problem = Some(format!("ECHO {} answered {quoted:?}", i - 1));
                    }
                    Ok(_) => match lines.read_exact(&mut body) {
                        Ok(())
                            if body[..ECHO_BYTES] == echo_payload(i - 1)[..] && body.ends_with(b"\r\n") =>
                        {
                            replies.echoes += 1;
                        }
                        Ok(()) => {
                            let quoted = String::from_utf8_lossy(&body[..40]).into_owned();
                            replies.problem = Some(format!("ECHO {} answered {quoted:?}...", i - 1));
                        }
                        Err(e) => replies.problem = Some(format!("reading the reply to ECHO {}: {e}", i - 1)),
                    },
                    Err(e) => replies.problem = Some(format!("reading reply {i}: {e}")),
                }
                if replies.problem.is_some() {
                    break;
                }
                replied.fetch_add(1, Ordering::Relaxed);
            }
            replies
        })
    };

    // The writer stalls: the node stopped reading once the replies it holds reached the
    // output high-water mark, so the rest waits in the sockets.
    let stalled_at = until_the_writer_stalls(&written);
    let at = whereabouts(&stream, stalled_at);
    eprintln!(
        "{name}: the writer stalled after {:.1} MiB of {:.1} MiB, {:.1} s after the pause \
         ({} replies so far): {:.1} MiB read by the node, {:.1} MiB unread in its socket, \
         {:.1} MiB in the client's",
        mib(stalled_at),
        mib(total),
        paused.elapsed().as_secs_f64(),
        replied.load(Ordering::Relaxed),
        mib(at.read_by_node),
        mib(at.unread_by_node),
        mib(at.in_client_socket)
    );
    let (rss_stalled, _) = report_memory(name, &cluster, 0, "with the writer stalled");
    eprintln!(
        "{name}: node RSS grew {:.1} MiB while the client wrote {:.1} MiB",
        (rss_stalled as f64 - rss_before as f64) / 1024.0,
        mib(stalled_at)
    );
    if writer.is_finished() {
        panic!(
            "the writer stopped while the store was stalled (it sent everything, or the node \
             closed its connection): {:?}; log:\n{}",
            writer.join(),
            log_of(&cluster, 0)
        );
    }
    assert_eq!(
        replied.load(Ordering::Relaxed),
        0,
        "a reply came out before the SET's, which waits for the paused store"
    );
    // Read: the replies held up to the mark (the last ECHO taken crosses it), a command the
    // node had begun, and the rest of its last read.
    let most = OUTPUT_HIGH_WATER_BYTES as u64 + 2 * echo_command_bytes + READ_BUDGET_BYTES as u64;
    assert!(
        at.read_by_node <= most,
        "the node read {} bytes (more than {most}) from a client whose replies wait behind a \
         command waiting for a stalled store: {at:?}",
        at.read_by_node
    );
    assert!(at.unread_by_node > 0, "the node's socket is not full: {at:?}");

    // The store is back: the SET is answered, then every ECHO with its argument.
    redis.resume();
    let paused_for = paused.elapsed();
    let wrote = writer.join().expect("the writer thread");
    assert_eq!(wrote, Ok(()), "the writer");
    let replies = reader.join().expect("the reader thread");
    eprintln!(
        "{name}: replies {replies:?}, the store paused for {:.1} s",
        paused_for.as_secs_f64()
    );
    assert_eq!(replies.problem, None);
    assert_eq!(
        replies.set.as_deref(),
        Some("+OK"),
        "the SET's reply (the store was paused for {paused_for:?}; it gives up after {IO_TIMEOUT_MS} ms)"
    );
    assert_eq!(replies.echoes, ECHOES);
    report_memory(name, &cluster, 0, "after the replies");
    assert!(cluster.is_running(0));
    let mut check = resp_client(resp, "a RESP client after the replies");
    check.write_all(b"GET k\r\n").expect("send");
    let mut got = [0u8; 7];
    check.read_exact(&mut got).expect("the GET reply");
    assert_eq!(&got, b"$1\r\nv\r\n");
}

/// Bytes of the PUT frames the pipelining test sends at most.
const PIPELINED_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes of each of its values (keys are 16 bytes).
const PIPELINED_VALUE_BYTES: usize = 1024;

/// The key of the `i`th PUT of the pipelining test (16 bytes).
fn pipelined_key(i: u64) -> String {
    format!("key-{i:012}")
}

/// The `i`th PUT of the pipelining test, request id `i + 1`, encoded.
fn pipelined_put(i: u64) -> Vec<u8> {
    let frame = Frame::new(
        i + 1,
        Message::Put {
            key: Bytes::from(pipelined_key(i)),
            value: Bytes::from(vec![b'a' + (i % 26) as u8; PIPELINED_VALUE_BYTES]),
        },
    );
    frame.to_bytes().expect("a PUT encodes").to_vec()
}

/// What the reader of the pipelining test saw: PUT_REPLYs, other replies (the first few
/// quoted), and what went wrong, if anything.
#[derive(Debug, Default)]
struct PutReplies {
    put_replies: u64,
    others: u64,
    first_others: Vec<String>,
    problem: Option<String>,
}

#[test]
fn a_binary_client_pipelining_into_a_stalled_store_is_not_read() {
    let _one = one_at_a_time();
    let name = "limits_binary_pipelining";
    let redis = RedisServer::start();
    // Its input must wait in the socket, not in the node: a read budget (1 MiB) and part of a
    // frame are the most the node should hold, so a 2 MiB query buffer limit is never reached.
    let spec = with_args(
        redis_cluster_spec(name, 1, &redis),
        &[
            "--client-query-buffer-limit",
            STALLED_QUERY_BUFFER_BYTES,
            "--max-value-bytes",
            "1048576",
        ],
    );
    let mut cluster = start_spec(name, spec);
    let addr = cluster.addr(0);
    // The store works before it stalls.
    let mut warm = Client::connect(addr, REQUEST_TIMEOUT).expect("connect");
    warm.put("warm", "up").expect("PUT");
    drop(warm);

    let frame_bytes = pipelined_put(0).len() as u64;
    let puts = PIPELINED_BYTES / frame_bytes;
    let total = puts * frame_bytes;
    let (rss_before, _) = report_memory(name, &cluster, 0, "before the PUTs");

    redis.pause();
    let paused = Instant::now();
    let stream = TcpStream::connect(addr).expect("connect");
    let written = Arc::new(AtomicU64::new(0));
    let replied = Arc::new(AtomicU64::new(0));
    let writer = {
        let mut i = 0;
        spawn_writer(
            stream.try_clone().expect("clone the stream"),
            Arc::clone(&written),
            move || {
                let mut chunk = Vec::with_capacity(128 * 1024);
                while i < puts && chunk.len() < 64 * 1024 {
                    chunk.extend_from_slice(&pipelined_put(i));
                    i += 1;
                }
                (!chunk.is_empty()).then_some(chunk)
            },
        )
    };
    let reader = {
        let mut stream = stream.try_clone().expect("clone the stream");
        stream
            .set_read_timeout(Some(CONVERGE_TIMEOUT))
            .expect("a read timeout");
        let replied = Arc::clone(&replied);
        std::thread::spawn(move || {
            let mut replies = PutReplies::default();
            let mut answered = vec![false; puts as usize];
            let mut raw = bytes::BytesMut::with_capacity(256 * 1024);
            let mut buf = vec![0u8; 64 * 1024];
            while replies.put_replies + replies.others < puts && replies.problem.is_none() {
                match chordkv_protocol::decode(&mut raw) {
                    Ok(Some(frame)) => {
                        let id = frame.request_id;
                        if id == 0 || id > puts || answered[id as usize - 1] {
                            replies.problem = Some(format!("a reply to request {id}: {:?}", frame.message));
                            break;
                        }
                        answered[id as usize - 1] = true;
                        if matches!(frame.message, Message::PutReply { .. }) {
                            replies.put_replies += 1;
                        } else {
                            replies.others += 1;
                            if replies.first_others.len() < 5 {
                                replies.first_others.push(format!("{id}: {:?}", frame.message));
                            }
                        }
                        replied.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        replies.problem = Some(format!("an undecodable reply: {e}"));
                        break;
                    }
                }
                match stream.read(&mut buf) {
                    Ok(0) => replies.problem = Some("EOF".into()),
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => replies.problem = Some(e.to_string()),
                }
            }
            replies
        })
    };

    // The writer stalls: the node stopped reading at the in-flight cap, so the rest waits in
    // the sockets.
    let stalled_at = until_the_writer_stalls(&written);
    let at = whereabouts(&stream, stalled_at);
    eprintln!(
        "{name}: the writer stalled after {:.1} MiB of {:.1} MiB ({} of {puts} PUTs of {frame_bytes} \
         bytes), {:.1} s after the pause ({} replies so far): {:.1} MiB read by the node (~{} PUTs), \
         {:.1} MiB unread in its socket, {:.1} MiB in the client's",
        mib(stalled_at),
        mib(total),
        stalled_at / frame_bytes,
        paused.elapsed().as_secs_f64(),
        replied.load(Ordering::Relaxed),
        mib(at.read_by_node),
        at.read_by_node / frame_bytes,
        mib(at.unread_by_node),
        mib(at.in_client_socket)
    );
    let (rss_stalled, _) = report_memory(name, &cluster, 0, "with the writer stalled");
    eprintln!(
        "{name}: node RSS grew {:.1} MiB while the client wrote {:.1} MiB",
        (rss_stalled as f64 - rss_before as f64) / 1024.0,
        mib(stalled_at)
    );
    if writer.is_finished() {
        panic!(
            "the writer stopped while the store was stalled (it sent everything, or the node \
             closed its connection): {:?}; log:\n{}",
            writer.join(),
            log_of(&cluster, 0)
        );
    }
    // Read: the requests in flight at the cap and the rest of the node's last read.
    let most = MAX_CLIENT_REQUESTS_IN_FLIGHT as u64 * frame_bytes + 2 * READ_BUDGET_BYTES as u64;
    assert!(
        at.read_by_node <= most,
        "the node read {} bytes (more than {most}) from a binary client whose PUTs wait for a \
         stalled store: {at:?}",
        at.read_by_node
    );
    assert!(at.unread_by_node > 0, "the node's socket is not full: {at:?}");

    // The store is back: every PUT is answered.
    redis.resume();
    let paused_for = paused.elapsed();
    let wrote = writer.join().expect("the writer thread");
    assert_eq!(wrote, Ok(()), "the writer");
    let replies = reader.join().expect("the reader thread");
    eprintln!(
        "{name}: replies {replies:?}, the store paused for {:.1} s",
        paused_for.as_secs_f64()
    );
    assert_eq!(replies.problem, None);
    assert_eq!(
        (replies.put_replies, replies.others),
        (puts, 0),
        "every PUT gets a PUT_REPLY (the store was paused for {paused_for:?}; it gives up \
         after {IO_TIMEOUT_MS} ms)"
    );
    report_memory(name, &cluster, 0, "after the replies");
    assert!(cluster.is_running(0));
    let mut check = Client::connect(addr, REQUEST_TIMEOUT).expect("connect");
    let last = puts - 1;
    let got = check.get(pipelined_key(last)).expect("GET");
    assert_eq!(
        got.value.as_deref(),
        Some(&vec![b'a' + (last % 26) as u8; PIPELINED_VALUE_BYTES][..])
    );
}

#[test]
fn an_unfinished_command_over_the_query_buffer_limit_closes_the_client() {
    let _one = one_at_a_time();
    let name = "limits_query_buffer";
    const LIMIT: usize = 1024 * 1024;
    let limit = LIMIT.to_string();
    let max_value = (LIMIT / 2).to_string();
    let cluster = one_node(
        name,
        true,
        &[
            "--client-query-buffer-limit",
            &limit,
            "--max-value-bytes",
            &max_value,
        ],
    );
    let resp = cluster.resp_addr(0).expect("a RESP port");
    report_memory(name, &cluster, 0, "before the unfinished command");

    // 100,000 arguments announced, 2 MiB of 1000-byte ones sent (about 2,000), never finished.
    let mut command = b"*100000\r\n".to_vec();
    let arg = [b"$1000\r\n".as_slice(), &[b'a'; 1000], b"\r\n"].concat();
    while command.len() < 2 * LIMIT {
        command.extend_from_slice(&arg);
    }
    let mut bad = TcpStream::connect(resp).expect("connect");
    bad.set_write_timeout(Some(CLOSE_TIMEOUT))
        .expect("a write timeout");
    let sent = {
        let mut bad = bad.try_clone().expect("clone the stream");
        // On a thread: the node may close the connection in the middle of the write.
        std::thread::spawn(move || bad.write_all(&command).map_err(|e| e.to_string()))
    };
    let got = read_until_closed(&mut bad, CLOSE_TIMEOUT);
    report_memory(name, &cluster, 0, "after the unfinished command");
    let got = got.expect("the node closes a client over its query buffer limit");
    assert!(
        got.is_empty(),
        "the node answered {:?}",
        String::from_utf8_lossy(&got)
    );
    match sent.join().expect("the writer thread") {
        Ok(()) => eprintln!("{name}: all 2 MiB went out before the close"),
        Err(e) => eprintln!("{name}: the write failed: {e}"),
    }

    // Only that client: another gets its answer, and the log says why.
    drop(resp_client(resp, "another RESP client to get +PONG"));
    poll_until(CLOSE_TIMEOUT, "the log to name the limit", || {
        log_of(&cluster, 0)
            .contains("client-query-buffer-limit")
            .then_some(())
    });
}

/// Whether the node has closed `stream` (EOF or reset), without waiting.
fn closed_now(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).expect("non-blocking");
    let mut buf = [0u8; 64];
    let closed = match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("unexpected bytes {:?}", &buf[..n]),
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) if is_closed(&e) => true,
        Err(e) => panic!("reading: {e}"),
    };
    stream.set_nonblocking(false).expect("blocking");
    closed
}

#[test]
fn idle_clients_are_closed_after_the_timeout() {
    let _one = one_at_a_time();
    let name = "limits_idle";
    // A Redis store, so that a request can be made to wait (the store paused).
    let redis = RedisServer::start();
    let mut spec = with_args(redis_cluster_spec(name, 1, &redis), &["--idle-timeout-secs", "1"]);
    spec.resp = true;
    let cluster = start_spec(name, spec);
    let (addr, resp) = (cluster.addr(0), cluster.resp_addr(0).expect("a RESP port"));
    report_memory(name, &cluster, 0, "before the clients");

    // A RESP client that goes quiet after one command is closed.
    let mut quiet = resp_client(resp, "a RESP client to get +PONG");
    let got = read_until_closed(&mut quiet, CLOSE_TIMEOUT).expect("the node closes an idle RESP client");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));

    // So are connections that never sent a whole frame: one silent, one with half a header.
    // Neither is known to be a peer's, and they hold descriptors as clients do.
    let mut silent = TcpStream::connect(addr).expect("connect");
    let mut half = TcpStream::connect(addr).expect("connect");
    half.write_all(&header_announcing_the_largest_frame(1)[..HEADER_BYTES / 2])
        .expect("send half a header");
    for (what, stream) in [("silent", &mut silent), ("half-header", &mut half)] {
        let got = read_until_closed(stream, CLOSE_TIMEOUT)
            .unwrap_or_else(|| panic!("the node closes an idle {what} connection"));
        assert!(got.is_empty(), "{what}: {:?}", String::from_utf8_lossy(&got));
    }

    // A binary client that asks every 200 ms for 3 s is not.
    let mut busy = Client::connect(addr, REQUEST_TIMEOUT).expect("connect");
    let until = Instant::now() + Duration::from_secs(3);
    let mut requests = 0;
    while Instant::now() < until {
        let got = busy
            .get("never-written")
            .unwrap_or_else(|e| panic!("GET {requests} of a busy client: {e}"));
        assert_eq!(got.value, None);
        requests += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("{name}: the busy client made {requests} requests on one connection");

    // Nor is a binary client waiting for its reply: its GET waits for the paused store while
    // a connection opened after it is closed as idle.
    redis.pause();
    let mut waiting = TcpStream::connect(addr).expect("connect");
    let get = Frame::new(
        7,
        Message::Get {
            key: Bytes::from_static(b"never-written"),
        },
    );
    waiting
        .write_all(&get.to_bytes().expect("a GET encodes"))
        .expect("send a GET");
    let mut reference = TcpStream::connect(addr).expect("connect");
    let closed = read_until_closed(&mut reference, CLOSE_TIMEOUT);
    let waiting_closed = closed_now(&mut waiting);
    redis.resume();
    closed.expect("the node closes the connection opened after the GET");
    assert!(
        !waiting_closed,
        "the node closed a client waiting for its reply as idle"
    );
    waiting
        .set_read_timeout(Some(CLOSE_TIMEOUT))
        .expect("a read timeout");
    let mut raw = bytes::BytesMut::new();
    let reply = loop {
        if let Some(frame) = chordkv_protocol::decode(&mut raw).expect("a reply frame") {
            break frame;
        }
        let mut buf = [0u8; 4096];
        let n = waiting.read(&mut buf).expect("the reply to the waiting GET");
        assert!(n > 0, "the node closed a client waiting for its reply");
        raw.extend_from_slice(&buf[..n]);
    };
    eprintln!("{name}: the waiting GET was answered {:?}", reply.message);
    assert_eq!(reply.request_id, 7);
    assert!(reply.message.is_reply());
    report_memory(name, &cluster, 0, "after the clients");
}
