//! The Redis-protocol front end of real `chordkv node` processes (`--resp`), with the `redis`
//! crate and `redis-cli` as clients: commands routed through the ring from every node,
//! pipelines answered in order, Redis' error replies, and malformed input closing only the
//! connection that sent it.
//!
//! Run with `cargo build --bins && cargo test -p chordkv-tests`; the redis-cli test needs
//! `redis-cli` (`tests/run-all.sh` installs it) and fails without it rather than skip.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chordkv_harness::cluster::LocalCluster;
use chordkv_tests::{
    cluster_spec, poll_until, start_spec, CliCluster, CONVERGE_TIMEOUT, REQUEST_TIMEOUT, RETRY_TIMEOUT,
};
use redis::{Connection, RedisResult, Value};

/// A ring of `nodes` nodes, each with a RESP listener on a free port.
fn start(name: &str, nodes: usize) -> LocalCluster {
    let mut spec = cluster_spec(name, nodes);
    spec.resp = true;
    let cluster = start_spec(name, spec);
    assert_eq!(cluster.resp_addrs().len(), nodes);
    cluster
}

fn connect(addr: SocketAddr) -> Connection {
    connect_with(addr, "")
}

/// A connection with the URL's query string `query` (`?protocol=resp3`).
fn connect_with(addr: SocketAddr, query: &str) -> Connection {
    let client = redis::Client::open(format!("redis://{addr}/{query}")).expect("a redis URL");
    let con = client
        .get_connection_with_timeout(REQUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to the RESP port {addr}: {e}"));
    con.set_read_timeout(Some(REQUEST_TIMEOUT))
        .expect("set a read timeout");
    con.set_write_timeout(Some(REQUEST_TIMEOUT))
        .expect("set a write timeout");
    con
}

fn query<T: redis::FromRedisValue>(con: &mut Connection, args: &[&str]) -> RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(con)
}

/// The error codes (as `-ERR <code>: ...` carries them) worth retrying: the ring is settling or
/// the machine is busy, as with the binary client's `is_retryable`.
const RETRYABLE: [&str; 6] = [
    "NotReady",
    "Unavailable",
    "Timeout",
    "Busy",
    "ShuttingDown",
    "StoreFailed",
];

/// Runs a command until it succeeds, for at most [`RETRY_TIMEOUT`]: a ring that has just
/// converged may still answer `NotReady` for a moment.
fn until_ok<T: redis::FromRedisValue>(con: &mut Connection, args: &[&str]) -> T {
    let deadline = Instant::now() + RETRY_TIMEOUT;
    loop {
        match query(con, args) {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline && RETRYABLE.iter().any(|c| e.to_string().contains(c)) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{args:?} failed: {e}"),
        }
    }
}

#[test]
fn commands_are_routed_through_the_ring_from_every_node() {
    let name = "resp_commands";
    let cluster = start(name, 3);
    let addrs = cluster.resp_addrs();
    let mut cons: Vec<Connection> = addrs.iter().map(|&a| connect(a)).collect();

    // Written through one node, read through every node.
    for i in 0..60 {
        let key = format!("key-{i}");
        let value = format!("value-{i}");
        let ok: String = until_ok(&mut cons[i % 3], &["SET", &key, &value]);
        assert_eq!(ok, "OK");
    }
    for (n, con) in cons.iter_mut().enumerate() {
        for i in 0..60 {
            let got: Option<String> = until_ok(con, &["GET", &format!("key-{i}")]);
            assert_eq!(
                got.as_deref(),
                Some(format!("value-{i}").as_str()),
                "via node {n}"
            );
        }
        let missing: Option<String> = until_ok(con, &["GET", "never-written"]);
        assert_eq!(missing, None);
    }

    // MSET and MGET fan out to the keys' owners and come back in argument order.
    let ok: String = until_ok(&mut cons[0], &["MSET", "m1", "a", "m2", "b", "m3", "c"]);
    assert_eq!(ok, "OK");
    let got: Vec<Option<String>> = until_ok(&mut cons[1], &["MGET", "m3", "nope", "m1", "m2"]);
    assert_eq!(
        got,
        vec![Some("c".into()), None, Some("a".into()), Some("b".into())]
    );

    // EXISTS counts every argument (a key named twice counts twice); DEL counts removals.
    let n: i64 = until_ok(&mut cons[2], &["EXISTS", "m1", "m2", "nope", "m1"]);
    assert_eq!(n, 3);
    let n: i64 = until_ok(&mut cons[0], &["DEL", "m1", "nope", "m2"]);
    assert_eq!(n, 2);
    let n: i64 = until_ok(&mut cons[1], &["EXISTS", "m1", "m2", "m3"]);
    assert_eq!(n, 1);
    let got: Option<String> = until_ok(&mut cons[2], &["GET", "m1"]);
    assert_eq!(got, None);

    // Binary-safe keys and values.
    let key = b"bin\r\n\0key".to_vec();
    let value = vec![0u8, 255, 13, 10, 42];
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(&value)
        .query(&mut cons[0])
        .expect("binary SET");
    let got: Vec<u8> = redis::cmd("GET")
        .arg(&key)
        .query(&mut cons[1])
        .expect("binary GET");
    assert_eq!(got, value);

    // DBSIZE counts the whole ring through any node (each member counts the keys it is
    // primary for): 60 keys, m3 and the binary key.
    poll_until(CONVERGE_TIMEOUT, "DBSIZE through every node to be 62", || {
        cons.iter_mut()
            .all(|c| until_ok::<i64>(c, &["DBSIZE"]) == 62)
            .then_some(())
    });

    // Server commands.
    let pong: String = until_ok(&mut cons[0], &["PING"]);
    assert_eq!(pong, "PONG");
    let echo: String = until_ok(&mut cons[0], &["ECHO", "hello"]);
    assert_eq!(echo, "hello");
    let ok: String = until_ok(&mut cons[0], &["SELECT", "0"]);
    assert_eq!(ok, "OK");
    let ok: String = until_ok(&mut cons[0], &["CLIENT", "SETNAME", "tester"]);
    assert_eq!(ok, "OK");
    let me: String = until_ok(&mut cons[0], &["CLIENT", "GETNAME"]);
    assert_eq!(me, "tester");
    let info: String = until_ok(&mut cons[1], &["INFO"]);
    for line in [
        "# Server",
        "redis_version:",
        "# Keyspace",
        "db0:keys=",
        "# chordkv",
        "successor_list:",
    ] {
        assert!(info.contains(line), "INFO lacks {line:?}:\n{info}");
    }
    assert!(info.contains(&format!("tcp_port:{}", addrs[1].port())), "{info}");
    let count: i64 = until_ok(&mut cons[1], &["COMMAND", "COUNT"]);
    assert!(count >= 15, "{count}");
}

#[test]
fn errors_use_redis_wording_and_keep_the_connection() {
    let name = "resp_errors";
    let cluster = start(name, 2);
    let mut con = connect(cluster.resp_addr(0).expect("resp"));

    let expect_err = |con: &mut Connection, args: &[&str], text: &str| {
        let e = query::<Value>(con, args).expect_err(&format!("{args:?} fails"));
        assert!(e.to_string().contains(text), "{args:?}: {e}");
    };
    expect_err(
        &mut con,
        &["LPUSH", "l", "x"],
        "unknown command 'LPUSH', with args beginning with: 'l' 'x'",
    );
    expect_err(
        &mut con,
        &["NOPE", "a", "b"],
        "unknown command 'NOPE', with args beginning with: 'a' 'b'",
    );
    expect_err(&mut con, &["GET"], "wrong number of arguments for 'get' command");
    expect_err(
        &mut con,
        &["MSETNX", "{a}x", "1", "{b}y", "2"],
        "Keys in request don't hash to the same slot",
    );
    expect_err(
        &mut con,
        &["MSET", "a"],
        "wrong number of arguments for 'mset' command",
    );
    expect_err(
        &mut con,
        &["SET", "k", "v", "EX", "0"],
        "invalid expire time in 'set' command",
    );
    expect_err(&mut con, &["SET", "k", "v", "BOGUS"], "syntax error");
    expect_err(&mut con, &["SELECT", "1"], "DB index is out of range");
    expect_err(&mut con, &["HELLO", "4"], "NOPROTO");
    // The connection is still good after every error.
    let ok: String = until_ok(&mut con, &["SET", "k", "v"]);
    assert_eq!(ok, "OK");
    let got: String = until_ok(&mut con, &["GET", "k"]);
    assert_eq!(got, "v");
}

/// Read-modify-write commands and transactions run at the key's owner, atomically: INCRs from
/// several connections through several nodes lose none and return each count once; of many
/// `SET lock NX` exactly one wins; MULTI/EXEC over one hash tag runs as one, over two is
/// refused with nothing applied; a WATCHed key written by another client makes EXEC run
/// nothing.
#[test]
fn counters_locks_and_transactions_run_at_the_owner() {
    let name = "resp_atomic";
    let cluster = start(name, 3);
    let addrs = cluster.resp_addrs();
    let mut con = connect(addrs[0]);
    let _: String = until_ok(&mut con, &["SET", "warm", "up"]);

    const THREADS: usize = 4;
    const EACH: usize = 50;
    let counts: Vec<Vec<i64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let addr = addrs[t % addrs.len()];
                s.spawn(move || {
                    let mut con = connect(addr);
                    (0..EACH)
                        .map(|_| until_ok::<i64>(&mut con, &["INCR", "counter"]))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an INCR thread"))
            .collect()
    });
    let mut all: Vec<i64> = counts.into_iter().flatten().collect();
    all.sort_unstable();
    let want: Vec<i64> = (1..=(THREADS * EACH) as i64).collect();
    assert_eq!(all, want, "every INCR returned its own count");
    let total: String = until_ok(&mut con, &["GET", "counter"]);
    assert_eq!(total, (THREADS * EACH).to_string());

    let winners: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let addr = addrs[t % addrs.len()];
                s.spawn(move || {
                    let mut con = connect(addr);
                    let got: Option<String> =
                        until_ok(&mut con, &["SET", "lock", &format!("owner-{t}"), "NX"]);
                    usize::from(got.is_some())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a lock thread"))
            .sum()
    });
    assert_eq!(winners, 1, "exactly one SET NX takes the lock");

    // One hash tag: the queue runs as one, each command's reply in order.
    let mut tx = connect(addrs[1]);
    let replies: Value = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("{user1}.name")
        .arg("ada")
        .cmd("INCRBY")
        .arg("{user1}.visits")
        .arg(5)
        .cmd("GET")
        .arg("{user1}.name")
        .query(&mut tx)
        .expect("a transaction over one hash tag");
    assert_eq!(
        replies,
        Value::Array(vec![
            Value::Okay,
            Value::Int(5),
            Value::BulkString(b"ada".to_vec())
        ])
    );
    // Two hash tags: refused, nothing applied.
    let e = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("{a}x")
        .arg("1")
        .cmd("SET")
        .arg("{b}y")
        .arg("2")
        .query::<Value>(&mut tx)
        .expect_err("two owners");
    // (The redis crate reports a failed EXEC without its text; the words, sent by hand:)
    let _ = e;
    let _: String = until_ok(&mut tx, &["MULTI"]);
    let _: String = until_ok(&mut tx, &["SET", "{a}x", "1"]);
    let _: String = until_ok(&mut tx, &["SET", "{b}y", "2"]);
    let e = query::<Value>(&mut tx, &["EXEC"]).expect_err("two owners");
    assert!(
        e.to_string()
            .contains("Keys in request don't hash to the same slot"),
        "{e}"
    );
    for key in ["{a}x", "{b}y"] {
        let got: Option<String> = until_ok(&mut tx, &["GET", key]);
        assert_eq!(got, None, "{key} was not applied");
    }

    // WATCH: another client's write in between makes EXEC run nothing.
    let mut other = connect(addrs[2]);
    let _: String = until_ok(&mut tx, &["SET", "{w}k", "start"]);
    let _: String = until_ok(&mut tx, &["WATCH", "{w}k"]);
    let _: String = until_ok(&mut other, &["SET", "{w}k", "theirs"]);
    let _: String = until_ok(&mut tx, &["MULTI"]);
    let _: String = until_ok(&mut tx, &["SET", "{w}k", "mine"]);
    let aborted: Value = until_ok(&mut tx, &["EXEC"]);
    assert_eq!(aborted, Value::Nil);
    let got: String = until_ok(&mut tx, &["GET", "{w}k"]);
    assert_eq!(got, "theirs");
    // Unchanged, it runs.
    let _: String = until_ok(&mut tx, &["WATCH", "{w}k"]);
    let _: String = until_ok(&mut tx, &["MULTI"]);
    let _: String = until_ok(&mut tx, &["APPEND", "{w}k", "+mine"]);
    let ran: Vec<i64> = until_ok(&mut tx, &["EXEC"]);
    assert_eq!(ran, [11]);
}

/// DBSIZE counts the keys of the whole ring; FLUSHALL deletes them on every member (with
/// tombstones: none comes back); FUNCTION FLUSH is the no-op Redis' test suite asks for.
#[test]
fn dbsize_and_flushall_cover_the_whole_ring() {
    let name = "resp_flushall";
    let cluster = start(name, 3);
    let addrs = cluster.resp_addrs();
    let mut cons: Vec<Connection> = addrs.iter().map(|&a| connect(a)).collect();
    for i in 0..90 {
        let _: String = until_ok(&mut cons[i % 3], &["SET", &format!("f-{i}"), "v"]);
    }
    for con in cons.iter_mut() {
        let n: i64 = until_ok(con, &["DBSIZE"]);
        assert_eq!(n, 90, "DBSIZE through any node counts the ring");
    }
    let ok: String = until_ok(&mut cons[1], &["FLUSHALL"]);
    assert_eq!(ok, "OK");
    for con in cons.iter_mut() {
        let n: i64 = until_ok(con, &["DBSIZE"]);
        assert_eq!(n, 0);
        for i in (0..90).step_by(7) {
            let got: Option<String> = until_ok(con, &["GET", &format!("f-{i}")]);
            assert_eq!(got, None);
        }
    }
    let _: String = until_ok(&mut cons[0], &["SET", "after", "v"]);
    let n: i64 = until_ok(&mut cons[2], &["DBSIZE"]);
    assert_eq!(n, 1, "writes after the flush are kept");
    let ok: String = until_ok(&mut cons[0], &["FUNCTION", "FLUSH"]);
    assert_eq!(ok, "OK");
    let ok: String = until_ok(&mut cons[0], &["FLUSHDB", "ASYNC"]);
    assert_eq!(ok, "OK");
}

/// An expiry is stored with the value and replicated with it: after the key's owner is
/// killed, the survivors still know the time to live, and every node stops returning the key
/// once it has passed.
#[test]
fn expiry_is_replicated_and_honoured_after_a_failover() {
    let name = "resp_expiry";
    let mut spec = chordkv_tests::replicated_spec(name, 3, &[]);
    spec.resp = true;
    let mut cluster = start_spec(name, spec);
    let addrs = cluster.resp_addrs();
    let mut con = connect(addrs[0]);
    for i in 0..20 {
        let _: String = until_ok(&mut con, &["SET", &format!("e-{i}"), "v", "EX", "3"]);
        let _: String = until_ok(&mut con, &["SET", &format!("p-{i}"), "v"]);
    }
    let ttl: i64 = until_ok(&mut con, &["TTL", "e-0"]);
    assert!((1..=3).contains(&ttl), "TTL {ttl}");
    // INFO keyspace: each node counts its primary range, so the nodes' counts add up to the
    // ring's: 40 keys, 20 of them expiring within 3 s.
    let mut sums = [0u64; 3];
    for &a in &addrs {
        let info: String = until_ok(&mut connect(a), &["INFO", "keyspace"]);
        let line = info
            .lines()
            .find(|l| l.starts_with("db0:"))
            .unwrap_or_default()
            .to_string();
        for (i, field) in ["keys=", "expires=", "avg_ttl="].iter().enumerate() {
            let value = line
                .split(',')
                .find_map(|f| f.trim_start_matches("db0:").strip_prefix(field));
            let n: u64 = value
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{field} in {info:?}"));
            sums[i] += if i == 2 { u64::from(n > 3_000) } else { n };
        }
    }
    assert_eq!(
        sums,
        [40, 20, 0],
        "keys, expiring keys, nodes with an avg_ttl over 3 s"
    );
    cluster.kill(0).expect("kill node 0");
    let mut other = connect(addrs[1]);
    for i in 0..20 {
        let got: Option<String> = until_ok(&mut other, &["GET", &format!("p-{i}")]);
        assert_eq!(got.as_deref(), Some("v"), "p-{i} after the failover");
    }
    for i in 0..20 {
        let ttl: i64 = until_ok(&mut other, &["PTTL", &format!("e-{i}")]);
        assert!(
            ttl == -2 || (0..=3000).contains(&ttl),
            "e-{i} keeps its expiry: {ttl}"
        );
    }
    poll_until(Duration::from_secs(30), "every expiring key to be gone", || {
        let mut cons: Vec<Connection> = addrs[1..].iter().map(|&a| connect(a)).collect();
        let all_gone = (0..20).all(|i| {
            cons.iter_mut()
                .all(|c| query::<Option<String>>(c, &["GET", &format!("e-{i}")]).is_ok_and(|v| v.is_none()))
        });
        all_gone.then_some(())
    });
    for i in 0..20 {
        let got: Option<String> = until_ok(&mut other, &["GET", &format!("p-{i}")]);
        assert_eq!(got.as_deref(), Some("v"));
    }
}

/// SCAN walks the whole ring with a cursor that survives a join: every key present for the
/// whole scan comes at least once; KEYS matches a pattern over every node; RANDOMKEY finds one.
#[test]
fn scan_returns_every_key_across_a_join() {
    let name = "resp_scan";
    let mut cluster = start(name, 3);
    let addrs = cluster.resp_addrs();
    let mut con = connect(addrs[0]);
    let mut all = std::collections::BTreeSet::new();
    for i in 0..300 {
        let key = format!("s-{i}");
        let _: String = until_ok(&mut con, &["SET", &key, "v"]);
        all.insert(key);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = "0".to_string();
    let mut pages = 0;
    loop {
        let (next, keys): (String, Vec<String>) = until_ok(&mut con, &["SCAN", &cursor, "COUNT", "20"]);
        seen.extend(keys);
        pages += 1;
        if pages == 3 {
            // A fourth node joins while the scan is under way.
            chordkv_tests::join_one(&mut cluster, 4);
        }
        if next == "0" {
            break;
        }
        cursor = next;
        assert!(pages < 10_000, "the scan ends");
    }
    assert!(
        all.is_subset(&seen),
        "missing: {:?}",
        all.difference(&seen).take(5).collect::<Vec<_>>()
    );
    let mut keys: Vec<String> = until_ok(&mut con, &["KEYS", "s-1?"]);
    keys.sort();
    let want: Vec<String> = (10..20).map(|i| format!("s-{i}")).collect();
    assert_eq!(keys, want);
    let every: Vec<String> = until_ok(&mut con, &["KEYS", "*"]);
    assert_eq!(every.len(), 300, "KEYS returns each key once");
    let one: Option<String> = until_ok(&mut con, &["RANDOMKEY"]);
    assert!(one.is_some_and(|k| all.contains(&k)));
    let (c, page): (String, Vec<String>) = until_ok(&mut con, &["SCAN", "0", "TYPE", "list"]);
    assert_eq!((c.as_str(), page.len()), ("0", 0));
}

/// A client that asks for RESP3 as it connects (the `redis` crate with `protocol=resp3`; redis-py
/// 8 and node-redis 6 do by default, and stopped at `-NOPROTO` before): the handshake's HELLO 3
/// gets the server map, nulls and INFO come in RESP3's types, and keys route through the ring
/// as over RESP2.
#[test]
fn a_resp3_client_connects_and_is_answered_in_resp3() {
    let name = "resp3_client";
    let cluster = start(name, 3);
    let addrs = cluster.resp_addrs();
    let mut cons: Vec<Connection> = addrs
        .iter()
        .map(|&a| connect_with(a, "?protocol=resp3"))
        .collect();
    let hello: Value = until_ok(&mut cons[0], &["HELLO", "3"]);
    let Value::Map(fields) = hello else {
        panic!("HELLO 3 answers a map: {hello:?}")
    };
    assert!(
        fields.contains(&(Value::BulkString(b"proto".to_vec()), Value::Int(3))),
        "{fields:?}"
    );
    for i in 0..30 {
        let key = format!("r3-{i}");
        let ok: String = until_ok(&mut cons[i % 3], &["SET", &key, &format!("v{i}")]);
        assert_eq!(ok, "OK");
    }
    for (j, con) in cons.iter_mut().enumerate() {
        for i in 0..30 {
            let got: Value = until_ok(con, &["GET", &format!("r3-{i}")]);
            assert_eq!(
                got,
                Value::BulkString(format!("v{i}").into_bytes()),
                "node {j} key {i}"
            );
        }
        let missing: Value = until_ok(con, &["GET", "r3-missing"]);
        assert_eq!(missing, Value::Nil, "RESP3's null `_`");
        let many: Value = until_ok(con, &["MGET", "r3-0", "r3-missing"]);
        assert_eq!(
            many,
            Value::Array(vec![Value::BulkString(b"v0".to_vec()), Value::Nil])
        );
    }
    let info: Value = until_ok(&mut cons[1], &["INFO", "keyspace"]);
    match info {
        Value::VerbatimString { text, .. } => assert!(text.contains("# Keyspace"), "{text}"),
        other => panic!("INFO in RESP3 is a verbatim string: {other:?}"),
    }
    let config: Value = until_ok(&mut cons[2], &["CONFIG", "GET", "databases"]);
    assert_eq!(
        config,
        Value::Map(vec![(
            Value::BulkString(b"databases".to_vec()),
            Value::BulkString(b"1".to_vec())
        )])
    );
    // HELLO 2 on the same connection: RESP2 again.
    let _: Value = until_ok(&mut cons[2], &["HELLO", "2"]);
    let info: Value = until_ok(&mut cons[2], &["INFO", "keyspace"]);
    assert!(matches!(info, Value::BulkString(_)), "{info:?}");
}

/// Values up to `--max-value-bytes` (Redis' `proto-max-bulk-len`, 512 MiB by default): one of
/// 40 MiB (over the 16 MiB a frame used to carry) is stored, replicated and read back after its
/// owner is killed; one byte over the node's maximum gets the error (not a connection reset),
/// nothing is written, and the same connection goes on.
#[test]
fn values_up_to_the_maximum_are_replicated_and_one_over_gets_the_error() {
    const MAX: usize = 40 << 20;
    let name = "resp_big_value";
    let max = MAX.to_string();
    let mut spec = chordkv_tests::replicated_spec(name, 3, &["--max-value-bytes", &max]);
    spec.resp = true;
    let mut cluster = start_spec(name, spec);
    let addrs = cluster.resp_addrs();
    let mut con = connect(addrs[0]);
    let limit: Vec<String> = until_ok(&mut con, &["CONFIG", "GET", "proto-max-bulk-len"]);
    assert_eq!(limit, ["proto-max-bulk-len", max.as_str()]);
    let ok: String = until_ok(&mut con, &["SET", "small", "v"]);
    assert_eq!(ok, "OK");
    let big: Vec<u8> = (0..MAX).map(|i| (i % 251) as u8).collect();
    let mut stored = false;
    for _ in 0..5 {
        // A loaded machine may miss a replica's deadline for 40 MiB: retried as a client would.
        match redis::cmd("SET")
            .arg("big")
            .arg(&big[..])
            .query::<String>(&mut con)
        {
            Ok(_) => {
                stored = true;
                break;
            }
            Err(e) => {
                eprintln!("{name}: SET big: {e}; retrying");
                con = connect(addrs[0]);
            }
        }
    }
    assert!(stored, "a value of --max-value-bytes is stored");
    let over = vec![b'v'; MAX + 1];
    let e = redis::cmd("SET")
        .arg("small")
        .arg(&over[..])
        .query::<Value>(&mut con)
        .expect_err("an over-long value is refused");
    assert!(
        e.to_string()
            .contains("over the node's maximum of 41943040 bytes"),
        "{e}"
    );
    let got: String = until_ok(&mut con, &["GET", "small"]);
    assert_eq!(got, "v", "nothing written, and the connection goes on");
    drop(con);
    // The owner of `big` dies: a replica holds all of it.
    let ring = chordkv_tests::converge(&mut cluster, "the ring of 3 converges");
    let owner = chordkv_tests::index_of(&cluster, chordkv_tests::preference_list(&ring, b"big", 3)[0]);
    cluster.kill(owner).expect("kill the owner");
    let other = addrs[(owner + 1) % addrs.len()];
    let mut con = connect(other);
    let got: Vec<u8> = until_ok(&mut con, &["GET", "big"]);
    assert!(
        got == big,
        "the 40 MiB value after its owner died ({} bytes)",
        got.len()
    );
}

/// CLIENT LIST shows every client of the node with its name; CLIENT KILL ID closes another
/// client, which its next command finds out; the killer goes on.
#[test]
fn client_list_shows_every_client_and_client_kill_closes_one() {
    let name = "resp_client_kill";
    let cluster = start(name, 1);
    let addr = cluster.resp_addr(0).expect("resp");
    let mut victim = connect(addr);
    let mut killer = connect(addr);
    let ok: String = until_ok(&mut victim, &["CLIENT", "SETNAME", "victim"]);
    assert_eq!(ok, "OK");
    let victim_id: i64 = until_ok(&mut victim, &["CLIENT", "ID"]);
    let list: String = until_ok(&mut killer, &["CLIENT", "LIST"]);
    let lines: Vec<&str> = list.lines().collect();
    assert!(lines.len() >= 2, "{list}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("id={victim_id} ")) && l.contains(" name=victim ")),
        "{list}"
    );
    let killed: i64 = until_ok(&mut killer, &["CLIENT", "KILL", "ID", &victim_id.to_string()]);
    assert_eq!(killed, 1);
    assert!(
        query::<String>(&mut victim, &["PING"]).is_err(),
        "the victim is closed"
    );
    let list: String = until_ok(&mut killer, &["CLIENT", "LIST"]);
    assert!(!list.contains("name=victim"), "{list}");
    let e = query::<String>(&mut killer, &["CLIENT", "KILL", "127.0.0.1:1"]).expect_err("no such client");
    assert!(e.to_string().contains("No such client"), "{e}");
    let pong: String = until_ok(&mut killer, &["PING"]);
    assert_eq!(pong, "PONG");
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let name = "resp_pipeline";
    let cluster = start(name, 3);
    let mut con = connect(cluster.resp_addr(1).expect("resp"));
    let _: String = until_ok(&mut con, &["SET", "warm-up", "x"]);

    // Keys all over the ring, so their replies leave the core in another order than sent.
    const N: usize = 300;
    let mut pipe = redis::pipe();
    for i in 0..N {
        pipe.cmd("SET").arg(format!("p{i}")).arg(format!("v{i}")).ignore();
    }
    for i in 0..N {
        pipe.cmd("GET").arg(format!("p{i}"));
        pipe.cmd("ECHO").arg(format!("marker{i}"));
    }
    pipe.cmd("MGET")
        .arg("p0")
        .arg("missing")
        .arg(format!("p{}", N - 1));
    let replies: Vec<Value> = pipe.query(&mut con).expect("the pipeline");
    assert_eq!(replies.len(), 2 * N + 1);
    for i in 0..N {
        let got: String = redis::from_redis_value(replies[2 * i].clone()).expect("a GET reply");
        assert_eq!(got, format!("v{i}"));
        let marker: String = redis::from_redis_value(replies[2 * i + 1].clone()).expect("an ECHO reply");
        assert_eq!(marker, format!("marker{i}"));
    }
    let mget: Vec<Option<String>> = redis::from_redis_value(replies[2 * N].clone()).expect("MGET");
    assert_eq!(mget, vec![Some("v0".into()), None, Some(format!("v{}", N - 1))]);

    // Inline commands, pipelined in one write as `telnet` or a shell pipe would send them.
    let mut raw = TcpStream::connect(cluster.resp_addr(2).expect("resp")).expect("connect");
    raw.set_read_timeout(Some(REQUEST_TIMEOUT)).expect("timeout");
    raw.write_all(b"PING\r\nGET p7\r\nEXISTS p1 nope\r\nECHO \"two words\"\r\nQUIT\r\n")
        .expect("send");
    let mut got = Vec::new();
    raw.read_to_end(&mut got).expect("the server closes after QUIT");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "+PONG\r\n$2\r\nv7\r\n:1\r\n$9\r\ntwo words\r\n+OK\r\n"
    );
}

/// One node serves every key itself, so a pipeline's store ops run together in one batch
/// (the loop's `run_store_batch`): each read still sees exactly the writes before it, of the
/// same key as of others, in the order sent.
#[test]
fn a_pipeline_of_local_writes_and_reads_sees_each_write_in_order() {
    let name = "resp_pipeline_local";
    let cluster = start(name, 1);
    let mut con = connect(cluster.resp_addr(0).expect("resp"));
    let _: String = until_ok(&mut con, &["SET", "warm-up", "x"]);

    const ROUNDS: usize = 200;
    let mut pipe = redis::pipe();
    for i in 0..ROUNDS {
        let key = format!("k{}", i % 7);
        pipe.cmd("GET").arg(&key);
        pipe.cmd("SET").arg(&key).arg(format!("v{i}")).ignore();
        pipe.cmd("GET").arg(&key);
        if i % 5 == 0 {
            pipe.cmd("DEL").arg(&key).ignore();
        }
    }
    let replies: Vec<Option<String>> = pipe.query(&mut con).expect("the pipeline");
    let mut model: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut want = Vec::new();
    for i in 0..ROUNDS {
        let key = format!("k{}", i % 7);
        want.push(model.get(&key).cloned());
        model.insert(key.clone(), format!("v{i}"));
        want.push(Some(format!("v{i}")));
        if i % 5 == 0 {
            model.remove(&key);
        }
    }
    assert_eq!(replies, want);
}

#[test]
fn malformed_input_closes_only_that_connection() {
    let name = "resp_malformed";
    let cluster = start(name, 2);
    let addr = cluster.resp_addr(0).expect("resp");
    let mut good = connect(addr);
    let _: String = until_ok(&mut good, &["SET", "kept", "yes"]);

    for garbage in [
        &b"*1\r\n:5\r\n"[..],
        b"*2\r\n$3\r\nGET\r\n$-5\r\n",
        b"*99999999999\r\n",
        b"*1\r\n$3\r\nGETXX\r\n",
        b"GET \"unbalanced\r\n",
    ] {
        let mut bad = TcpStream::connect(addr).expect("connect");
        bad.set_read_timeout(Some(REQUEST_TIMEOUT)).expect("timeout");
        // A valid command first: its answer comes before the error.
        bad.write_all(b"PING\r\n").expect("send");
        bad.write_all(garbage).expect("send");
        let mut got = Vec::new();
        bad.read_to_end(&mut got)
            .unwrap_or_else(|e| panic!("{garbage:?}: the server must close the connection: {e}"));
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("+PONG\r\n-ERR Protocol error: ") && text.ends_with("\r\n"),
            "{garbage:?} got {text:?}"
        );
        // The other connection goes on.
        let got: String = until_ok(&mut good, &["GET", "kept"]);
        assert_eq!(got, "yes");
    }

    // Oversized input is refused before it is buffered: a bulk over 4 GiB (one over the node's
    // --max-value-bytes and within that is skipped and answered instead: the test above).
    let mut bad = TcpStream::connect(addr).expect("connect");
    bad.set_read_timeout(Some(REQUEST_TIMEOUT)).expect("timeout");
    let huge = format!(
        "*2\r\n$3\r\nGET\r\n${}\r\n",
        chordkv_protocol::resp::MAX_SKIPPED_BULK_BYTES + 1
    );
    bad.write_all(huge.as_bytes()).expect("send");
    let mut got = Vec::new();
    bad.read_to_end(&mut got).expect("closed");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "-ERR Protocol error: invalid bulk length\r\n"
    );
    let pong: String = until_ok(&mut good, &["PING"]);
    assert_eq!(pong, "PONG");
}

/// `redis-cli` against a node: what a person would type. `tests/run-all.sh` installs it.
#[test]
fn redis_cli_smoke() {
    let name = "resp_redis_cli";
    let cluster = start(name, 2);
    let addr = cluster.resp_addr(1).expect("resp");
    let cli = |args: &[&str]| -> String {
        let out = Command::new("redis-cli")
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli (tests/run-all.sh installs it): {e}"));
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    };
    // Retry the first write while the fresh ring settles.
    let deadline = Instant::now() + RETRY_TIMEOUT;
    while cli(&["SET", "cli-key", "cli-value"]) != "OK" {
        assert!(Instant::now() < deadline, "SET through redis-cli never succeeded");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(cli(&["PING"]), "PONG");
    assert_eq!(cli(&["GET", "cli-key"]), "cli-value");
    assert_eq!(cli(&["EXISTS", "cli-key"]), "1");
    assert_eq!(cli(&["DEL", "cli-key"]), "1");
    assert_eq!(cli(&["GET", "cli-key"]), "");
    assert!(cli(&["INFO", "chordkv"]).contains("# chordkv"));
    assert!(cli(&["NOPE"]).contains("unknown command 'NOPE'"));
    let time = cli(&["TIME"]);
    let seconds: u64 = time
        .lines()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("TIME's seconds");
    assert!(seconds > 1_700_000_000, "{time}");
    assert_eq!(cli(&["RESET"]), "RESET");

    // Commands piped in, as `redis-cli < file` sends them.
    let mut child = Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(b"SET piped 1\nGET piped\nDBSIZE\n")
        .expect("write to redis-cli");
    let out = child.wait_with_output().expect("redis-cli finishes");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..2], ["OK", "1"], "{text}");
    assert!(lines[2].parse::<u64>().is_ok(), "{text}");

    // `redis-cli --stat` reads INFO's keys, used_memory, connected_clients, blocked_clients,
    // total_commands_processed and total_connections_received; a missing one printed
    // -9223372036854775808 in its column. It runs until killed: samples 0.2 s apart, its
    // output line-buffered (coreutils' stdbuf) so that what it printed is there after the kill.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "redis-cli"])
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["--stat", "-i", "0.2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run redis-cli --stat");
    std::thread::sleep(Duration::from_millis(700));
    let _ = child.kill();
    let out = child.wait_with_output().expect("redis-cli --stat stops");
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.first().is_some_and(|k| k.parse::<u64>().is_ok()))
        .collect();
    assert!(!rows.is_empty(), "no sample from redis-cli --stat: {text}");
    for row in &rows {
        assert!(!row.iter().any(|w| w.contains("-9223372036854775808")), "{text}");
        // keys, mem, clients (this one at least), blocked, requests, connections.
        assert!(row.len() >= 6, "{text}");
        assert!(row[2].parse::<u64>().is_ok_and(|c| c >= 1), "clients: {text}");
    }
}

/// `chordkv cluster --resp` prints every node's RESP address before the ready line.
#[test]
fn cluster_command_prints_resp_addresses() {
    let mut cluster = CliCluster::start("resp_cluster_cli", &["--nodes", "2", "--resp"]);
    let resp = cluster.addresses("resp");
    // The second line must be the ready line.
    cluster.ready();
    assert_eq!(resp.len(), 2);
    for addr in resp {
        let mut con = connect(addr);
        let pong: String = until_ok(&mut con, &["PING"]);
        assert_eq!(pong, "PONG");
    }
    let status = cluster.stop();
    assert!(status.success(), "{status}");
}
