//! The node and its file-descriptor limit (issue 13, item 5): at the limit a node used to stop
//! accepting anyone, peers included, and its peers called it dead. Now it lowers
//! `--max-clients` to what the limit allows (and says so), refuses the client one over with
//! Redis' words, and keeps accepting its peers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use chordkv_tests::*;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// PING on a new RESP connection: the connection and the first line of the answer.
fn resp_ping(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    s.write_all(b"PING\r\n").expect("send PING");
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .expect("an answer");
    (s, line.trim_end().to_string())
}

#[test]
fn at_the_descriptor_limit_clients_are_refused_and_peers_still_join() {
    let _one = one_at_a_time();
    let dir = scratch_dir("descriptors");
    let (a, a_resp, b) = (free_addr(), free_addr(), free_addr());
    // Node A with 256 descriptors: 128 for clients, 128 kept for everything else.
    let a_log = dir.join("a.log");
    let node_a = Command::new("bash")
        .args(["-c", "ulimit -n 256 && exec \"$0\" \"$@\""])
        .arg(chordkv_bin())
        .args(["node", "--listen", &a.to_string(), "--resp", &a_resp.to_string()])
        .args(NODE_ARGS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&a_log).unwrap())
        .spawn()
        .expect("start node A");
    let _a = ChildGuard::new(node_a);
    let log = || std::fs::read_to_string(&a_log).unwrap_or_default();
    poll_until(CONVERGE_TIMEOUT, "node A listens", || {
        log().contains("Redis protocol").then_some(())
    });
    assert!(
        log().contains("max clients lowered from 10000 to 128"),
        "{}",
        log()
    );

    let mut held = Vec::new();
    for i in 0..128 {
        let (s, line) = resp_ping(a_resp);
        assert_eq!(line, "+PONG", "client {i}");
        held.push(s);
    }
    let (mut over, line) = resp_ping(a_resp);
    assert_eq!(line, "-ERR max number of clients reached");
    let mut rest = Vec::new();
    let _ = over.read_to_end(&mut rest);

    // A peer still joins A (peers are not clients) and the ring forms.
    let b_log = dir.join("b.log");
    let node_b = Command::new(chordkv_bin())
        .args(["node", "--listen", &b.to_string(), "--join", &a.to_string()])
        .args(NODE_ARGS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&b_log).unwrap())
        .spawn()
        .expect("start node B");
    let _b = ChildGuard::new(node_b);
    poll_until(CONVERGE_TIMEOUT, "node B joins A", || {
        let text = std::fs::read_to_string(&b_log).unwrap_or_default();
        text.lines()
            .any(|l| l.contains("joined the ring") && l.contains(&format!("successor={a}")))
            .then_some(())
    });
    // Once a client leaves, another gets in.
    drop(held.pop());
    poll_until(CONVERGE_TIMEOUT, "a client gets in again", || {
        let (_s, line) = resp_ping(a_resp);
        (line == "+PONG").then_some(())
    });
}
