//! What clients can make a node hold (issue 13): real `chordkv node` processes abused over
//! real sockets, each test printing the node's memory (VmRSS, VmSize) before and after.
//!
//! - Frame headers announcing 32 MiB cost only their bytes: 200 of them, under an address-space
//!   limit 1 GiB above the node's size, and the node still serves.
//! - A client over `--max-clients` is answered with Redis' words (RESP and binary); peers are
//!   not counted, and a node at its limit still takes a joining peer.
//! - A RESP client writing into a stalled store is no longer read: its writes stall in TCP
//!   flow control, not in the node's memory (a 2 MiB query buffer limit is never reached), and
//!   all complete once the store is back.
//! - An unfinished command over `--client-query-buffer-limit` closes its client.
//! - `--idle-timeout-secs` closes idle clients, connections that never sent a whole frame
//!   among them, and spares a client that keeps asking and one that waits for its reply.
//!
//! Waits are bounded polls; the memory figures are printed, never asserted.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chordkv_client::Client;
use chordkv_harness::cluster::LocalCluster;
use chordkv_protocol::{Frame, Message, HEADER_BYTES, MAX_FRAME_BYTES};
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

/// An 18-byte header of a PUT announcing a payload of `MAX_FRAME_BYTES` (32 MiB), a valid
/// header that only says more bytes are coming.
fn header_announcing_32_mib(request_id: u64) -> Vec<u8> {
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
fn headers_announcing_32_mib_cost_only_their_bytes() {
    let _one = one_at_a_time();
    let name = "limits_headers";
    const CONNECTIONS: usize = 200;
    let mut cluster = one_node(name, false, &[]);
    let addr = cluster.addr(0);
    let pid = cluster.pid(0).expect("running");

    // Address space: what the node has now plus 1 GiB. Reserving the 32 MiB each header
    // announces would take 200 x 32 MiB = 6.25 GiB, and the allocation would fail (abort).
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
        s.write_all(&header_announcing_32_mib(i as u64))
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
    let redis = RedisServer::start();
    let mut spec = with_args(
        redis_cluster_spec(name, 1, &redis),
        &["--client-query-buffer-limit", STALLED_QUERY_BUFFER_BYTES],
    );
    spec.resp = true;
    let mut cluster = start_spec(name, spec);
    let resp = cluster.resp_addr(0).expect("a RESP port");
    // The store works before it stalls.
    let mut warm = resp_client(resp, "a RESP client");
    warm.write_all(&set_command(u64::MAX, b"warm")).expect("send");
    let mut buf = [0u8; 5];
    warm.read_exact(&mut buf).expect("a reply");
    assert_eq!(&buf, b"+OK\r\n");
    drop(warm);

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
        let mut stream = stream.try_clone().expect("clone the stream");
        let written = Arc::clone(&written);
        std::thread::spawn(move || -> Result<(), String> {
            let mut chunk = Vec::with_capacity(256 * 1024);
            let mut i = 0;
            while i < commands {
                chunk.clear();
                while i < commands && chunk.len() < 64 * 1024 {
                    chunk.extend_from_slice(&set_command(i, &value));
                    i += 1;
                }
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
    let round = POLL_PAUSE * 5;
    let mut last = (0, 0); // (bytes written, rounds unchanged)
    let stalled_at = poll_until(CONVERGE_TIMEOUT, "the writer to stall", || {
        std::thread::sleep(round);
        let now = written.load(Ordering::SeqCst);
        last = if now == last.0 {
            (now, last.1 + 1)
        } else {
            (now, 0)
        };
        (now > 0 && last.1 >= 2).then_some(now)
    });
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

#[test]
fn an_unfinished_command_over_the_query_buffer_limit_closes_the_client() {
    let _one = one_at_a_time();
    let name = "limits_query_buffer";
    const LIMIT: usize = 1024 * 1024;
    let cluster = one_node(name, true, &["--client-query-buffer-limit", &LIMIT.to_string()]);
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
    half.write_all(&header_announcing_32_mib(1)[..HEADER_BYTES / 2])
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
