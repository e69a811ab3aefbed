//! Real `chordkv node` processes keeping their keys in one shared `redis-server`
//! (`--store redis://...`, each node under its own namespace): data survives a join and a
//! graceful leave, and a Redis outage turns into clear `StoreFailed` errors, not hangs, until
//! Redis is back.
//!
//! Run with `cargo build --bins && cargo test -p chordkv-tests`; `redis-server` must be
//! installed (`tests/run-all.sh` installs it).

use std::net::SocketAddr;
use std::time::Duration;

use chordkv_client::ClientError;
use chordkv_core::rng::Rng;
use chordkv_harness::cluster::LocalCluster;
use chordkv_protocol::ErrorCode;
use chordkv_tests::{
    check_all_keys, converge, join_one, leave_one, redis_cluster_spec, replicated_spec, seed, start_spec,
    wait_stat_sum, with_args, write_keys, Clients, RedisServer, AVAILABLE, NOTHING_LOST,
};

const KEYS: usize = 500;

/// A started ring of `nodes` nodes keeping their keys in `redis` ([`redis_cluster_spec`]), with
/// the node arguments `extra` besides.
fn start(name: &str, nodes: usize, redis: &RedisServer, extra: &[&str]) -> LocalCluster {
    eprintln!("{name}: redis at {}", redis.url());
    start_spec(name, with_args(redis_cluster_spec(name, nodes, redis), extra))
}

#[test]
fn keys_in_a_shared_redis_survive_a_join_and_a_graceful_leave() {
    let name = "redis_join_and_leave";
    let mut rng = Rng::new(seed(name));
    let redis = RedisServer::start();
    let mut cluster = start(name, 4, &redis, &[]);
    let mut clients = Clients::new();

    let addrs = cluster.addrs();
    let data = write_keys(&mut clients, &mut rng, &addrs, KEYS);
    // Read back through nodes other than the writers (any random node, many times over).
    check_all_keys(&mut clients, &mut rng, &addrs, &data, NOTHING_LOST);
    // The keys are in Redis, spread over the nodes' namespaces.
    let per_node: Vec<u64> = addrs.iter().map(|&a| redis.live_keys_of(a)).collect();
    eprintln!("{name}: live keys per node namespace: {per_node:?}");
    assert!(per_node.iter().sum::<u64>() >= KEYS as u64, "{per_node:?}");
    assert!(
        per_node.iter().filter(|&&n| n > 0).count() >= 2,
        "the keys are spread over several namespaces: {per_node:?}"
    );

    let (fifth, _) = join_one(&mut cluster, 5);
    eprintln!("{name}: node {fifth} ({}) joined", cluster.addr(fifth));
    check_all_keys(&mut clients, &mut rng, &cluster.live_addrs(), &data, NOTHING_LOST);

    let victim = rng.below(5) as usize;
    let report = leave_one(name, &mut cluster, victim, 4);
    check_all_keys(&mut clients, &mut rng, &report.addrs(), &data, NOTHING_LOST);
}

/// While Redis is down every GET and PUT is answered at once with `StoreFailed` (a node never
/// hangs on its store); once Redis is back the same requests succeed. With replicas the nodes'
/// gets and puts go through the store's pipeline worker.
#[test]
fn a_redis_outage_gives_clear_errors_then_heals() {
    redis_outage("redis_outage", &[]);
}

/// The same without replicas, where the nodes' gets and puts go through the event loop's own
/// connection to Redis (`store::redis::pipe`).
#[test]
fn a_redis_outage_gives_clear_errors_then_heals_on_the_event_loops_connection() {
    redis_outage("redis_outage_pipe", &["--replicas", "0"]);
}

fn redis_outage(name: &str, extra: &[&str]) {
    let mut redis = RedisServer::start();
    let cluster = start(name, 3, &redis, extra);
    let mut clients = Clients::new();
    let addrs = cluster.addrs();
    for (i, &addr) in addrs.iter().enumerate() {
        let key = format!("before-{i}");
        clients.retrying(addr, "PUT before the outage", |c| c.put(key.clone(), "v"));
    }

    redis.kill();
    for (i, &addr) in addrs.iter().enumerate() {
        for op in ["GET", "PUT"] {
            let key = format!("during-{i}-{op}");
            // The client's own timeout bounds the wait: a hang shows as ClientError::Timeout.
            let result = match op {
                "GET" => clients.with(addr, |c| c.get(key.clone()).map(|_| ())),
                _ => clients.with(addr, |c| c.put(key.clone(), "v").map(|_| ())),
            };
            match result {
                Err(ClientError::Server {
                    code: ErrorCode::StoreFailed,
                    text,
                }) => assert!(
                    text.contains(&redis.url()),
                    "{op} {key} through {addr}: the error names Redis: {text}"
                ),
                other => {
                    panic!("{op} {key} through {addr} with Redis down: expected StoreFailed, got {other:?}")
                }
            }
        }
    }

    // A new, empty Redis on the same port: the nodes reconnect by themselves.
    redis.restart();
    for (i, &addr) in addrs.iter().enumerate() {
        let key = format!("during-{i}-PUT");
        clients.retrying(addr, &format!("PUT {key} after the outage"), |c| {
            c.put(key.clone(), "after")
        });
        let got = clients.retrying(addr, &format!("GET {key} after the outage"), |c| {
            c.get(key.clone())
        });
        assert_eq!(
            got.value.as_deref(),
            Some(&b"after"[..]),
            "GET {key} through {addr}"
        );
    }
}

/// A write an owner handed to a Redis that then froze (SIGSTOP) is answered with an error that
/// says it may or may not have been applied, never one that says it was not: the frozen
/// redis-server holds the write in its socket and may carry it out when it resumes, after the
/// client's answer (docs/architecture.md, "Faults", rule 1). On the event loop's connection
/// (no replicas: a `StoreFailed` after the driver's I/O timeout) and on the store worker's
/// (2 replicas on one Redis), the write sent to its owner (a key node 0 owns: the owner's own
/// answer, not the entry's retries, decides the outcome). Once Redis resumes the key holds the
/// frozen write's value or the one before, and a write after it wins.
#[test]
fn a_write_to_a_frozen_redis_is_answered_as_maybe_applied() {
    for (name, extra) in [
        ("frozen_redis_write_pipe", &["--replicas", "0"][..]),
        ("frozen_redis_write_replicas", &[][..]),
    ] {
        let redis = RedisServer::start();
        let nodes = if extra.is_empty() { 3 } else { 1 };
        let cluster = start(name, nodes, &redis, extra);
        let addr = cluster.addrs()[0];
        let mut clients = Clients::new();
        // A key node 0 owns (0 hops): a write through it goes to its own store.
        let key = (0..1_000)
            .map(|i| format!("frozen-{i}"))
            .find(|k| {
                let put = clients.retrying(addr, "PUT before the freeze", |c| c.put(k.clone(), "before"));
                put.hops == 0
            })
            .expect("node 0 owns a key among 1,000");

        redis.pause();
        let answer = chordkv_client::Client::connect(addr, Duration::from_secs(30))
            .and_then(|mut c| c.put(key.clone(), "during"));
        redis.resume();
        match answer {
            Err(ClientError::Server {
                code: ErrorCode::StoreFailed | ErrorCode::Timeout,
                text,
            }) => assert!(
                text.contains("may or may not have been applied"),
                "{name}: the answer to a write a frozen Redis may still run: {text}"
            ),
            other => panic!("{name}: PUT with Redis frozen: expected StoreFailed or Timeout, got {other:?}"),
        }
        let got = clients.retrying(addr, "GET after the freeze", |c| c.get(key.clone()));
        let got = got
            .value
            .as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned());
        assert!(
            matches!(got.as_deref(), Some("before" | "during")),
            "{name}: after the freeze the key holds one of its writes: {got:?}"
        );
        eprintln!(
            "{name}: the frozen write {}",
            if got.as_deref() == Some("during") {
                "was applied when Redis resumed"
            } else {
                "was not applied"
            }
        );
        clients.retrying(addr, "PUT after the freeze", |c| c.put(key.clone(), "after"));
        let got = clients.retrying(addr, "GET after the last PUT", |c| c.get(key.clone()));
        assert_eq!(got.value.as_deref(), Some(&b"after"[..]), "{name}");
    }
}

/// The replication crash test on the Redis driver: 8 nodes with `--replicas 2` sharing one
/// redis-server, 2,000 keys, two nodes SIGKILLed at once: every key reads back, and
/// re-replication restores exactly three copies of each.
#[test]
fn two_kills_on_the_redis_driver_lose_nothing_and_copies_are_restored() {
    let name = "redis_two_kills";
    const N: usize = 2_000;
    let mut rng = Rng::new(seed(name));
    let redis = RedisServer::start();
    // Copies restored onto the surviving nodes: `available` (see `AVAILABLE`).
    let mut cluster = start(name, 8, &redis, &AVAILABLE);
    let mut clients = Clients::new();
    let addrs = cluster.addrs();
    let data = write_keys(&mut clients, &mut rng, &addrs, N);
    // 3 copies of every key.
    wait_stat_sum(
        &mut clients,
        &addrs,
        "keys",
        3 * N as u64,
        Duration::from_secs(60),
    );
    let first = rng.below(8) as usize;
    let second = (first + 1 + rng.below(7) as usize) % 8;
    eprintln!("{name}: killing nodes {first} and {second}");
    cluster.kill(first).expect("kill");
    cluster.kill(second).expect("kill");
    let live: Vec<SocketAddr> = (0..8)
        .filter(|&i| i != first && i != second)
        .map(|i| addrs[i])
        .collect();
    check_all_keys(&mut clients, &mut rng, &live, &data, NOTHING_LOST);
    converge(&mut cluster, "the ring of 6 converges");
    // Copies restored to 3 of every key.
    wait_stat_sum(&mut clients, &live, "keys", 3 * N as u64, Duration::from_secs(90));
}

/// Issue 11, case 7: a node's Redis restarts empty (no persistence) under it. The node must
/// never answer "not found" for a key the ring holds: it notices the loss (the store's marker
/// is gone) and answers errors until it has caught up from the other copies, then the values.
#[test]
fn a_redis_restarted_empty_never_answers_not_found_for_a_key_the_ring_holds() {
    const KEYS: usize = 200;
    let name = "redis_lost";
    let mut rng = Rng::new(seed(name));
    let mut redis: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let mut spec = replicated_spec(name, 3, &[]);
    spec.per_node_args = redis
        .iter()
        .map(|r| vec!["--store".to_string(), r.url()])
        .collect();
    let cluster = start_spec(name, spec);
    let addrs = cluster.addrs();
    let mut clients = Clients::new();
    let data = write_keys(&mut clients, &mut rng, &addrs, KEYS);
    // Node 0's Redis comes back empty.
    redis[0].restart();
    eprintln!("{name}: the redis-server of {} restarted empty", addrs[0]);
    // Every key through every node, the emptied one first: a value or a retryable error
    // (retried), never a miss.
    for via in addrs.iter().copied() {
        for (key, value) in &data {
            let got = clients.retrying(via, &format!("GET {key}"), |c| c.get(key.clone()));
            assert_eq!(
                got.value.as_deref(),
                Some(value.as_bytes()),
                "GET {key} through {via} after the store of {} was emptied",
                addrs[0]
            );
        }
    }
    let losses = clients
        .with(addrs[0], |c| c.stats())
        .ok()
        .and_then(|s| s.into_iter().find(|(n, _)| n == "store_losses"));
    eprintln!(
        "{name}: every key read back through every node; {losses:?} on {}",
        addrs[0]
    );
}

/// A Redis whose `proto-max-bulk-len` is below chordkv's 512 MiB: the node lowers its
/// `--max-value-bytes` to what the driver can write there (the value after a 17-byte header),
/// so a value that Redis would refuse gets a clear `TooLarge` error, never a store failure, and
/// the longest one it takes is stored and read back.
#[test]
fn a_redis_with_a_lower_proto_max_bulk_len_lowers_the_nodes_value_limit() {
    let name = "redis_bulk_len";
    let redis = RedisServer::start();
    let set = redis.command(&[b"CONFIG", b"SET", b"proto-max-bulk-len", b"2097152"]);
    assert_eq!(set, "+OK", "CONFIG SET proto-max-bulk-len");
    let cluster = start(name, 1, &redis, &[]);
    let most = 2_097_152 - 17;
    let mut client = cluster.client(0, Duration::from_secs(10)).expect("connect");
    client
        .put("fits", vec![b'a'; most])
        .expect("the longest value Redis takes");
    let e = client
        .put("over", vec![b'a'; most + 1])
        .expect_err("a value Redis would refuse");
    assert_eq!(e.server_code(), Some(ErrorCode::TooLarge), "{e}");
    assert!(e.to_string().contains("--max-value-bytes"), "{e}");
    let got = client.get("fits").expect("read it back");
    assert_eq!(got.value.map(|v| v.len()), Some(most));
    assert!(
        client.get("over").expect("read").value.is_none(),
        "nothing written"
    );
}
