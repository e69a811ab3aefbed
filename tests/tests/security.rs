//! A ring strangers cannot join (issue 13): real `chordkv node` processes with `--keyring`.
//!
//! - A process without the ring's key, or with another key, cannot join: the ring and every
//!   node's key count stay as they were, and the stranger's log says it was refused.
//! - A forged REPLICATE (version 2^64-1) on a plain connection is refused and changes nothing.
//! - Records captured from an authenticated connection, replayed on a new connection or again
//!   on the same one, are rejected.
//! - The keyring rotates (install, use, remove, each with SIGHUP) under load with no error and
//!   no lost write.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chordkv_client::Client;
use chordkv_harness::cluster::LocalCluster;
use chordkv_protocol::{ErrorCode, Frame, Item, Message};
use chordkv_server::keyring::{generate_key, Keyring};
use chordkv_server::secure::Initiator;
use chordkv_tests::*;

/// Writes a keyring file of `keys` (mode 0600) and returns its path.
fn write_keyring(path: &Path, keys: &[&str]) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("write the keyring");
    for k in keys {
        writeln!(f, "{k}").expect("write a key");
    }
    path.to_path_buf()
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Starts a 3-node ring with `--replicas 1` and the keyring at `keyring`, and writes `keys`
/// keys through it; returns the cluster once every copy is stored.
fn keyed_ring(name: &str, keyring: impl FnOnce(&Path) -> PathBuf, keys: usize) -> (LocalCluster, PathBuf) {
    let spec = cluster_spec(name, 3);
    let dir = spec.log_dir.clone().expect("a log directory");
    let file = keyring(&dir);
    let spec = with_args(
        spec,
        &["--replicas", "1", "--keyring", file.to_str().expect("UTF-8 path")],
    );
    let cluster = start_spec(name, spec);
    let mut clients = Clients::new();
    for i in 0..keys {
        let addr = cluster.addr(i % 3);
        clients.retrying(addr, "PUT", |c| c.put(format!("k{i}"), format!("v{i}")));
    }
    wait_stat_sum(
        &mut clients,
        &cluster.addrs(),
        "keys",
        2 * keys as u64,
        CONVERGE_TIMEOUT,
    );
    (cluster, dir)
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Every node's log, one after another.
fn node_logs(cluster: &LocalCluster) -> String {
    (0..cluster.len())
        .filter_map(|i| cluster.log_path(i))
        .map(log_text)
        .collect()
}

#[test]
fn a_stranger_without_the_key_cannot_join() {
    let _one = one_at_a_time();
    let (mut cluster, dir) = keyed_ring(
        "stranger",
        |d| write_keyring(&d.join("ring.key"), &[&generate_key()]),
        60,
    );
    let mut clients = Clients::new();
    let addrs = cluster.addrs();
    let before = stat_of_each(&mut clients, &addrs, "keys");

    // One stranger without a keyring, one with a key of another ring.
    let other = write_keyring(&dir.join("other.key"), &[&generate_key()]);
    let mut strangers = Vec::new();
    for (i, keyring) in [None, Some(&other)].into_iter().enumerate() {
        let addr = free_addr();
        let log = dir.join(format!("stranger-{i}.log"));
        let mut cmd = Command::new(chordkv_bin());
        cmd.args([
            "node",
            "--listen",
            &addr.to_string(),
            "--join",
            &cluster.addr(0).to_string(),
        ])
        // 8 vnodes, each retrying its join: a stranger that knocks often.
        .args(["--stabilize-ms", "100", "--vnodes", "8"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("a log file"));
        if let Some(k) = keyring {
            cmd.args(["--keyring", k.to_str().expect("UTF-8 path")]);
        }
        strangers.push((ChildGuard::new(cmd.spawn().expect("start a stranger")), addr, log));
    }
    for (_, addr, log) in &strangers {
        poll_until(CONVERGE_TIMEOUT, "the stranger is refused", || {
            log_text(log).contains("refused").then_some(())
        });
        eprintln!(
            "{addr}: {}",
            log_text(log)
                .lines()
                .find(|l| l.contains("refused"))
                .unwrap_or("")
        );
    }
    // Many stabilize rounds (100 ms each) after the refusals: the ring is as it was.
    std::thread::sleep(Duration::from_secs(3));
    // A ring that refuses a stranger is never "reachable again" to it: it accepts each TCP
    // connection before it refuses, and a stranger retrying every second logged that line
    // every second.
    for (_, addr, log) in &strangers {
        let text = log_text(log);
        let again = text.matches("reachable again").count();
        assert_eq!(
            again, 0,
            "{addr} logged the refusing ring reachable again:\n{text}"
        );
    }
    let ring = converge(&mut cluster, "the ring after the strangers knocked");
    let members: Vec<SocketAddr> = ring.nodes.iter().map(|n| n.addr.host).collect();
    for (_, addr, _) in &strangers {
        assert!(
            !members.contains(addr),
            "stranger {addr} is in the ring: {members:?}"
        );
        let keys = stat(&mut clients, *addr, "keys");
        assert_eq!(keys, 0, "stranger {addr} received keys");
    }
    assert_eq!(
        stat_of_each(&mut clients, &addrs, "keys"),
        before,
        "key counts changed"
    );
    // The ring logged the refusals (throttled) and serves as before.
    assert!(
        node_logs(&cluster).contains("peer operation"),
        "no refusal logged"
    );
    let got = clients.retrying(cluster.addr(1), "GET", |c| c.get("k7"));
    assert_eq!(got.value.as_deref(), Some(&b"v7"[..]));
}

/// Reads from `stream` until the peer closes it (or resets it); fails on a timeout.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .expect("a read timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the node did not close the connection: {e}"),
        }
    }
}

fn value_at(clients: &mut Clients, addr: SocketAddr, key: &str) -> Option<Bytes> {
    clients.retrying(addr, "GET", |c| c.get(key.to_string())).value
}

#[test]
fn a_forged_replicate_and_replayed_records_are_rejected() {
    let _one = one_at_a_time();
    let key = generate_key();
    let (cluster, dir) = keyed_ring("forged", |d| write_keyring(&d.join("ring.key"), &[&key]), 10);
    let addr = cluster.addr(0);
    let mut clients = Clients::new();

    // A forged REPLICATE with the highest version, on a plain connection.
    let forged = Frame::new(
        9,
        Message::Replicate {
            items: vec![Item {
                key: Bytes::from_static(b"k1"),
                version: u64::MAX,
                value: Some(Bytes::from_static(b"forged")),
                expires_at: 0,
            }],
        },
    );
    let mut plain = TcpStream::connect(addr).expect("connect");
    plain.write_all(&forged.to_bytes().unwrap()).expect("send");
    let reply = read_until_closed(&mut plain);
    let frame = chordkv_protocol::decode_frame(Bytes::from(reply)).expect("one reply frame, then the close");
    match frame.message {
        Message::Error { code, text, .. } => {
            assert_eq!(code, ErrorCode::Unauthorized, "{text}");
            assert!(text.contains("REPLICATE is a peer operation"), "{text}");
        }
        other => panic!("a forged REPLICATE was answered with {other:?}"),
    }
    for addr in cluster.addrs() {
        assert_eq!(value_at(&mut clients, addr, "k1").as_deref(), Some(&b"v1"[..]));
    }
    clients.retrying(addr, "PUT", |c| c.put("k1", "after"));
    assert_eq!(
        value_at(&mut clients, addr, "k1").as_deref(),
        Some(&b"after"[..]),
        "the key is not pinned"
    );

    // An authenticated connection, every byte it sent recorded.
    let keyring = Keyring::load(&dir.join("ring.key")).expect("the keyring");
    let mut sent = Vec::new();
    let mut stream = TcpStream::connect(addr).expect("connect");
    let initiator = Initiator::start(&keyring, &mut sent).expect("a hello");
    stream.write_all(&sent).expect("send the hello");
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    let mut raw = BytesMut::new();
    let mut buf = [0u8; 4096];
    let mut channel = loop {
        let n = stream.read(&mut buf).expect("the node answers the hello");
        assert!(n > 0, "the node closed an authenticated handshake");
        raw.extend_from_slice(&buf[..n]);
        if let Some(c) = initiator.finish(&mut raw).expect("the node proves the key") {
            break c;
        }
    };
    let mut record = Vec::new();
    channel.seal(
        &Frame::new(
            1,
            Message::Put {
                key: Bytes::from_static(b"replayed"),
                value: Bytes::from_static(b"first"),
            },
        )
        .to_bytes()
        .unwrap(),
        &mut record,
    );
    stream.write_all(&record).expect("send the PUT");
    sent.extend_from_slice(&record);
    let mut plain_in = BytesMut::new();
    let reply = loop {
        channel.open(&mut raw, &mut plain_in).expect("the reply opens");
        if let Some(f) = chordkv_protocol::decode(&mut plain_in).expect("a frame") {
            break f;
        }
        let n = stream.read(&mut buf).expect("the reply");
        assert!(n > 0);
        raw.extend_from_slice(&buf[..n]);
    };
    assert!(matches!(reply.message, Message::PutReply { .. }), "{reply:?}");
    assert_eq!(
        value_at(&mut clients, addr, "replayed").as_deref(),
        Some(&b"first"[..])
    );
    clients.retrying(addr, "PUT", |c| c.put("replayed", "second"));

    // The whole conversation replayed on a new connection: the node answers the hello with a
    // new nonce, the recorded PUT does not open, the connection is closed.
    let mut again = TcpStream::connect(addr).expect("connect");
    again.write_all(&sent).expect("replay");
    read_until_closed(&mut again);
    // The PUT's record sent again on its own connection: its nonce has passed.
    stream.write_all(&record).expect("replay on the same connection");
    read_until_closed(&mut stream);
    for a in cluster.addrs() {
        assert_eq!(
            value_at(&mut clients, a, "replayed").as_deref(),
            Some(&b"second"[..]),
            "a replayed PUT was applied"
        );
    }
    assert!(
        node_logs(&cluster).contains("a record failed authentication"),
        "no refusal logged"
    );
}

fn sighup_all(cluster: &LocalCluster) {
    for i in 0..cluster.len() {
        let pid = cluster.pid(i).expect("a running node");
        signal(pid, libc::SIGHUP).expect("SIGHUP");
    }
}

/// Waits until every node logged `count` keyring reloads.
fn wait_reloads(cluster: &LocalCluster, count: usize) {
    for i in 0..cluster.len() {
        let log = cluster.log_path(i).expect("a log file").to_path_buf();
        poll_until(CONVERGE_TIMEOUT, "the keyring is read again", || {
            (log_text(&log).matches("keyring of").count() > count).then_some(())
        });
    }
}

#[test]
fn the_keyring_rotates_under_load_without_errors_or_lost_writes() {
    let _one = one_at_a_time();
    let (old, new) = (generate_key(), generate_key());
    let (cluster, dir) = keyed_ring("rotate", |d| write_keyring(&d.join("ring.key"), &[&old]), 0);
    let file = dir.join("ring.key");
    let addrs = cluster.addrs();

    // Load: PUTs of new keys and GETs of written ones, through every node, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        let addrs = addrs.clone();
        std::thread::spawn(move || {
            let mut clients: Vec<Client> = addrs
                .iter()
                .map(|&a| Client::connect(a, REQUEST_TIMEOUT).expect("connect"))
                .collect();
            let (mut written, mut errors) = (0usize, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && written < 200_000 && Instant::now() < deadline {
                let c = &mut clients[written % addrs.len()];
                if let Err(e) = c.put(format!("r{written}"), format!("v{written}")) {
                    errors.push(format!("PUT r{written}: {e}"));
                }
                if written > 0 {
                    let k = written / 2;
                    match c.get(format!("r{k}")) {
                        Ok(g) if g.value.as_deref() == Some(format!("v{k}").as_bytes()) => {}
                        Ok(g) => errors.push(format!("GET r{k}: {:?}", g.value)),
                        Err(e) => errors.push(format!("GET r{k}: {e}")),
                    }
                }
                written += 1;
            }
            (written, errors)
        })
    };
    let pause = || std::thread::sleep(Duration::from_secs(1));
    pause();
    write_keyring(&file, &[&old, &new]); // install
    sighup_all(&cluster);
    wait_reloads(&cluster, 1);
    pause();
    write_keyring(&file, &[&new, &old]); // use
    sighup_all(&cluster);
    wait_reloads(&cluster, 2);
    pause();
    write_keyring(&file, &[&new]); // remove
    sighup_all(&cluster);
    wait_reloads(&cluster, 3);
    pause();
    stop.store(true, Ordering::Relaxed);
    let (written, errors) = load.join().expect("the load thread");
    eprintln!("rotation under load: {written} writes, {} errors", errors.len());
    assert!(written > 0);
    assert!(
        errors.is_empty(),
        "{} errors during the rotation, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let mut clients = Clients::new();
    for i in (0..written).step_by(7) {
        let got = value_at(&mut clients, addrs[i % 3], &format!("r{i}"));
        assert_eq!(got.as_deref(), Some(format!("v{i}").as_bytes()), "r{i} lost");
    }
    // The old key no longer opens a connection.
    let stale = Keyring::parse(&old).unwrap();
    let err = chordkv_server::secure::connect_blocking(addrs[0], &stale)
        .err()
        .expect("the old key is refused");
    assert!(err.to_string().contains("not in this node's keyring"), "{err}");
}
