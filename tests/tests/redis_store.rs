//! The Redis driver against a real `redis-server` (started on a free port per test, killed when
//! the test ends): the shared conformance suite, agreement with the memory driver on random
//! operations, namespaces, large values, corrupt data, a flushed script cache, Redis going
//! down, freezing and coming back, and the loss of its data reported (a restart without
//! persistence, a flush); and the same for the pipelined batches of a node's partitions
//! (`RedisPartitions`).
//!
//! `redis-server` must be installed; `tests/run-all.sh` installs it.

use std::io::Write;
use std::net::TcpListener;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chordkv_core::rng::Rng;
use chordkv_core::store::{self, Entry, MemoryStore, Store, StoreError};
use chordkv_harness::conformance;
use chordkv_protocol::{Id, Item};
use chordkv_server::store::redis::pipe::RedisPipe;
use chordkv_server::store::redis::watched::{LARGE_RECORD_BYTES, WATCHED_MIN_PUTS_ON_LOOP};
/// Puts enough for a transaction on either path (the blocking pipelines take fewer).
const WATCHED_MIN_PUTS: usize = WATCHED_MIN_PUTS_ON_LOOP;
use chordkv_server::store::{Batch, RedisPartitions, RedisStore};
use chordkv_tests::RedisServer;

/// Bound of any one store call while Redis is down or frozen: the driver's timeouts are
/// seconds, so reaching this means the call hung.
const CALL_BOUND: Duration = Duration::from_secs(30);

/// The test's view of a `redis-server` ([`RedisServer`], shared with the cluster tests): the
/// driver opened on it, and a raw connection for looking at or tampering with its keys.
trait RedisStoreUnderTest {
    fn store(&self, namespace: &str) -> RedisStore;
    fn raw(&self) -> redis::Connection;
}

impl RedisStoreUnderTest for RedisServer {
    fn store(&self, namespace: &str) -> RedisStore {
        RedisStore::open(&self.url(), namespace).expect("open the Redis store")
    }

    fn raw(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("connect to redis-server")
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

fn live(version: u64, value: &[u8]) -> Entry {
    Entry {
        version,
        value: Some(Bytes::copy_from_slice(value)),
        expires_at: 0,
    }
}

/// Runs `f` on a thread and returns its result, failing the test if it takes longer than
/// [`CALL_BOUND`] (a hang).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(CALL_BOUND)
        .unwrap_or_else(|_| panic!("{what} did not return within {CALL_BOUND:?}"))
}

fn assert_unavailable<T: std::fmt::Debug>(what: &str, r: Result<T, StoreError>) {
    match r {
        Err(StoreError::Unavailable(msg)) => {
            assert!(
                msg.contains("redis://127.0.0.1:"),
                "{what}: the message names Redis: {msg}"
            )
        }
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

fn assert_lost<T: std::fmt::Debug>(what: &str, r: Result<T, StoreError>) {
    match r {
        Err(StoreError::Lost(msg)) => {
            assert!(
                msg.contains("redis://127.0.0.1:"),
                "{what}: the message names Redis: {msg}"
            )
        }
        other => panic!("{what}: expected Lost, got {other:?}"),
    }
}

#[test]
fn passes_the_conformance_suite() {
    let redis = RedisServer::start();
    let store = redis.store("127.0.0.1:7001");
    assert_eq!(store.name(), "redis");
    assert!(store.is_blocking());
    conformance::run_all(&store);
}

#[test]
fn opened_by_url() {
    let redis = RedisServer::start();
    let store = chordkv_server::store::open(&redis.url(), "n1").expect("open by URL");
    assert_eq!(store.name(), "redis");
    assert_eq!(
        chordkv_server::store::open("memory", "n1").unwrap().name(),
        "memory"
    );
    let err = chordkv_server::store::open("postgres://x", "n1")
        .err()
        .expect("an unknown scheme")
        .to_string();
    assert!(err.contains("expected `memory` or redis://HOST:PORT/DB"), "{err}");

    let dead = format!("redis://127.0.0.1:{}/0", free_port());
    let err = format!("{:#}", RedisStore::open(&dead, "n1").unwrap_err());
    assert_eq!(err, format!("cannot connect to {dead}: connection refused"));
}

/// A Redis that could lose part of the data without the marker telling is refused at open,
/// with the setting named and the one to use instead: one that evicts any key when full
/// (`allkeys-*`: it dropped one namespace's hash and left its index and marker, which read as
/// missing keys and a corrupt store), and one that keeps its data only in RDB snapshots (a
/// restart reloads the snapshot, marker included: older values, deletes undone). Policies that
/// evict only keys with a TTL, which the store never sets, are taken. A server that wants a
/// password the URL lacks is told apart from one that refuses scripts.
#[test]
fn a_redis_that_could_lose_data_without_notice_is_refused() {
    let redis = RedisServer::start();
    let open = || {
        RedisStore::open(&redis.url(), "n1")
            .map(|_| ())
            .map_err(|e| e.to_string())
    };

    redis.command(&[b"CONFIG", b"SET", b"maxmemory-policy", b"allkeys-lru"]);
    let err = open().unwrap_err();
    assert!(
        err.contains("maxmemory-policy allkeys-lru") && err.contains("noeviction"),
        "{err}"
    );
    redis.command(&[b"CONFIG", b"SET", b"maxmemory-policy", b"allkeys-lfu"]);
    assert!(open().unwrap_err().contains("maxmemory-policy allkeys-lfu"));
    redis.command(&[b"CONFIG", b"SET", b"maxmemory-policy", b"volatile-lru"]);
    open().expect("volatile-* evicts only keys with a TTL");

    redis.command(&[b"CONFIG", b"SET", b"maxmemory-policy", b"noeviction"]);
    redis.command(&[b"CONFIG", b"SET", b"save", b"3600 1 300 100"]);
    let err = open().unwrap_err();
    assert!(
        err.contains("RDB snapshots") && err.contains("save \"3600 1 300 100\""),
        "{err}"
    );
    assert!(err.contains("appendonly yes"), "{err}");
    redis.command(&[b"CONFIG", b"SET", b"save", b""]);
    open().expect("no persistence: a restart empties it, which the marker shows");

    redis.command(&[b"CONFIG", b"SET", b"requirepass", b"s3cret"]);
    let err = open().unwrap_err();
    assert!(
        err.contains("requires a password") && err.contains("redis://:PASSWORD@"),
        "{err}"
    );
    let with_password = redis.url().replace("redis://", "redis://:s3cret@");
    RedisStore::open(&with_password, "n1").expect("the password in the URL");
    let db1 = redis.url().replace("/0", "/1");
    let err = RedisStore::open(&db1, "n1").unwrap_err().to_string();
    assert!(
        err.contains("requires a password"),
        "a SELECT refused at connect: {err}"
    );

    // A replica refuses writes (or loses them at its next sync).
    let replica = RedisServer::start();
    let port = redis.port().to_string();
    replica.command(&[b"REPLICAOF", b"127.0.0.1", port.as_bytes()]);
    let err = RedisStore::open(&replica.url(), "n1").unwrap_err().to_string();
    assert!(err.contains("role:slave"), "{err}");
}

/// Random merges, removals, batches and scans agree with the memory driver, including ranges
/// that wrap, ranges that start or end at 0 and at the top of the ring, and cursors.
#[test]
fn agrees_with_the_memory_store() {
    let seed = std::env::var("CHORDKV_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d);
    println!("seed = {seed} (replay with CHORDKV_TEST_SEED={seed})");
    let mut rng = Rng::new(seed);
    let redis = RedisServer::start();
    let r = redis.store("127.0.0.1:7001");
    let m = MemoryStore::new();
    let keys: Vec<Bytes> = (0..120)
        .map(|i| match i {
            0 => Bytes::new(),
            1 => Bytes::from_static(&[0, 255, 0]),
            _ => Bytes::from(format!("k{i}")),
        })
        .collect();
    let mut ids: Vec<Id> = keys.iter().map(|k| Id::of_key(k)).collect();
    ids.extend([Id::ZERO, Id::MAX, Id::from_u64(1)]);
    let pick_id = |rng: &mut Rng| -> Id {
        let id = ids[rng.below(ids.len() as u64) as usize];
        match rng.below(3) {
            0 => id,
            1 => id.wrapping_add(&Id::from_u64(1)),
            _ => id.wrapping_sub(&Id::from_u64(1)),
        }
    };
    // Some values expire (the Redis driver's records with an expiry have a header of their own).
    let entry = |rng: &mut Rng| {
        let value = (!rng.chance(0.25)).then(|| Bytes::from(format!("v{}", rng.next_u64())));
        let expires_at = if value.is_some() && rng.chance(0.3) {
            rng.range(1, 1 << 50)
        } else {
            0
        };
        Entry {
            version: rng.range(1, 30),
            value,
            expires_at,
        }
    };
    for step in 0..3_000 {
        let key = keys[rng.below(keys.len() as u64) as usize].clone();
        match rng.below(10) {
            0..=3 => {
                let e = entry(&mut rng);
                assert_eq!(
                    r.put(&key, e.clone()).unwrap(),
                    m.put(&key, e).unwrap(),
                    "step {step}: put"
                );
            }
            4 => {
                let v = rng.range(0, 30);
                assert_eq!(
                    r.delete(&key, v).unwrap(),
                    m.delete(&key, v).unwrap(),
                    "step {step}: delete"
                );
            }
            5 => {
                let items: Vec<Item> = (0..rng.range(1, 40))
                    .map(|_| {
                        let e = entry(&mut rng);
                        Item {
                            key: keys[rng.below(keys.len() as u64) as usize].clone(),
                            version: e.version,
                            value: e.value,
                            expires_at: e.expires_at,
                        }
                    })
                    .collect();
                assert_eq!(
                    r.put_many(items.clone()).unwrap(),
                    m.put_many(items).unwrap(),
                    "step {step}: put_many"
                );
            }
            6 => {
                let batch: Vec<(Bytes, u64)> = (0..rng.range(1, 40))
                    .map(|_| {
                        (
                            keys[rng.below(keys.len() as u64) as usize].clone(),
                            rng.range(0, 30),
                        )
                    })
                    .collect();
                assert_eq!(
                    r.delete_many(batch.clone()).unwrap(),
                    m.delete_many(batch).unwrap(),
                    "step {step}: delete_many"
                );
            }
            7 => {
                let (start, end) = (pick_id(&mut rng), pick_id(&mut rng));
                assert_eq!(
                    r.count_range(&start, &end).unwrap(),
                    m.count_range(&start, &end).unwrap(),
                    "step {step}: count_range"
                );
                // Expiring and live counts from the records' headers, as the memory store's.
                let now = rng.range(0, 1 << 50);
                let counts = r.range_counts(&start, &end, now).unwrap();
                assert_eq!(
                    counts,
                    m.range_counts(&start, &end, now).unwrap(),
                    "step {step}: range_counts"
                );
                assert_eq!(counts.live, m.count_range(&start, &end).unwrap());
            }
            _ => {
                let (start, end) = (pick_id(&mut rng), pick_id(&mut rng));
                let after = rng.chance(0.5).then(|| {
                    let k = keys[rng.below(keys.len() as u64) as usize].clone();
                    (Id::of_key(&k), k)
                });
                let limit = rng.range(1, 150) as usize;
                assert_eq!(
                    r.scan(&start, &end, after.as_ref(), limit).unwrap(),
                    m.scan(&start, &end, after.as_ref(), limit).unwrap(),
                    "step {step}: scan ({start:?}, {end:?}] after {after:?} limit {limit}"
                );
            }
        }
        assert_eq!(r.len().unwrap(), m.len().unwrap(), "step {step}: len");
        let probe = &keys[rng.below(keys.len() as u64) as usize];
        assert_eq!(r.get(probe).unwrap(), m.get(probe).unwrap(), "step {step}: get");
    }
    let all = Id::hash(b"anywhere");
    assert_eq!(
        r.scan(&all, &all, None, 1_000).unwrap(),
        m.scan(&all, &all, None, 1_000).unwrap()
    );
}

#[test]
fn namespaces_do_not_see_each_other() {
    let redis = RedisServer::start();
    let a = redis.store("127.0.0.1:7001");
    let b = redis.store("127.0.0.1:7002");
    let key = Bytes::from_static(b"shared-key");
    a.put(&key, live(5, b"from a")).unwrap();
    b.put(&key, live(3, b"from b")).unwrap();
    a.put(&Bytes::from_static(b"only-a"), live(1, b"x")).unwrap();
    assert_eq!(a.get(&key).unwrap(), Some(live(5, b"from a")));
    assert_eq!(b.get(&key).unwrap(), Some(live(3, b"from b")));
    assert_eq!(b.get(b"only-a").unwrap(), None);
    assert_eq!((a.len().unwrap(), b.len().unwrap()), (2, 1));
    let all = Id::hash(b"anywhere");
    assert_eq!(b.scan(&all, &all, None, 100).unwrap().len(), 1);
    assert!(a.delete(&key, 5).unwrap());
    assert_eq!(b.get(&key).unwrap(), Some(live(3, b"from b")));
    // The same namespace opened again sees the same entries.
    let a2 = redis.store("127.0.0.1:7001");
    assert_eq!(a2.len().unwrap(), 1);
    assert_eq!(a2.get(b"only-a").unwrap(), Some(live(1, b"x")));
    assert_eq!(a.redis_keys()[0], "ckv:{127.0.0.1:7001}:data");
}

/// `Store::bytes` is Redis' MEMORY USAGE of the namespace: none of it before the first write,
/// more once a large value is in, and another namespace's keys do not count.
#[test]
fn bytes_held_are_the_namespace_s_memory_usage() {
    let redis = RedisServer::start();
    let a = redis.store("127.0.0.1:7001");
    let b = redis.store("127.0.0.1:7002");
    assert_eq!(a.bytes().unwrap(), Some(0), "an empty namespace");
    a.put(&Bytes::from_static(b"small"), live(1, b"x")).unwrap();
    let small = a.bytes().unwrap().expect("Redis tells");
    assert!(small > 0, "one key: {small} bytes");
    a.put(&Bytes::from_static(b"large"), live(1, &vec![7u8; 100_000]))
        .unwrap();
    let large = a.bytes().unwrap().expect("Redis tells");
    assert!(
        large >= small + 100_000,
        "{small} bytes, then {large} with 100 kB more"
    );
    assert_eq!(b.bytes().unwrap(), Some(0), "the other namespace holds nothing");
}

#[test]
fn largest_keys_and_values_round_trip() {
    let redis = RedisServer::start();
    let s = redis.store("n");
    let mut value = vec![0u8; 16 << 20];
    Rng::new(7).fill(&mut value);
    let value = Bytes::from(value);
    let key = Bytes::from(vec![0xa5u8; 64 << 10]);
    let entry = Entry {
        version: u64::MAX,
        value: Some(value.clone()),
        expires_at: 0,
    };
    assert!(s.put(&key, entry.clone()).unwrap().applied);
    assert_eq!(s.get(&key).unwrap(), Some(entry.clone()));
    let all = Id::ZERO;
    let scanned = s.scan(&all, &all, None, 10).unwrap();
    assert_eq!(scanned.len(), 1);
    assert_eq!((&scanned[0].key, scanned[0].value.as_ref()), (&key, Some(&value)));
    // Pipelined, next to small entries.
    let items = vec![
        Item {
            key: Bytes::from_static(b"small"),
            version: 1,
            value: Some(Bytes::from_static(b"s")),
            expires_at: 0,
        },
        Item {
            key: Bytes::from_static(b"big"),
            version: 1,
            value: Some(value.clone()),
            expires_at: 0,
        },
    ];
    assert_eq!(s.put_many(items).unwrap(), 2);
    assert_eq!(s.get(b"big").unwrap().and_then(|e| e.value), Some(value));
    assert_eq!(s.count_range(&all, &all).unwrap(), 3);
    assert_eq!(s.len().unwrap(), 3);
}

#[test]
fn batches_larger_than_a_pipeline() {
    let redis = RedisServer::start();
    let s = redis.store("n");
    let items: Vec<Item> = (0..2_000)
        .map(|i| Item {
            key: Bytes::from(format!("key-{i}")),
            version: 10,
            value: (i % 10 != 0).then(|| Bytes::from(format!("value-{i}"))),
            expires_at: 0,
        })
        .collect();
    assert_eq!(s.put_many(items.clone()).unwrap(), 2_000);
    assert_eq!(
        s.put_many(items.clone()).unwrap(),
        0,
        "the same versions again change nothing"
    );
    assert_eq!(s.len().unwrap(), 1_800);
    let all = Id::ZERO;
    assert_eq!(s.count_range(&all, &all).unwrap(), 1_800);
    assert_eq!(s.scan(&all, &all, None, usize::MAX).unwrap().len(), 2_000);
    let removals: Vec<(Bytes, u64)> = items.iter().map(|it| (it.key.clone(), 10)).collect();
    assert_eq!(s.delete_many(removals).unwrap(), 2_000);
    assert_eq!(s.len().unwrap(), 0);
    assert!(s.scan(&all, &all, None, 10).unwrap().is_empty());
}

#[test]
fn concurrent_writers_keep_the_live_count() {
    let redis = RedisServer::start();
    let s = Arc::new(redis.store("n"));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    // Every thread writes every key at its own version: one wins per key.
                    let key = Bytes::from(format!("key-{i}"));
                    let tombstone = (i + t) % 7 == 0;
                    let value = (!tombstone).then(|| Bytes::from(format!("t{t}")));
                    s.put(
                        &key,
                        Entry {
                            version: t + 1,
                            value,
                            expires_at: 0,
                        },
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
    let all = Id::ZERO;
    let entries = s.scan(&all, &all, None, 1_000).unwrap();
    assert_eq!(entries.len(), 200);
    assert!(
        entries.iter().all(|it| it.version == 8),
        "the highest version wins"
    );
    let live = entries.iter().filter(|it| it.value.is_some()).count() as u64;
    assert_eq!(s.len().unwrap(), live);
}

#[test]
fn a_flushed_script_cache_is_reloaded() {
    let redis = RedisServer::start();
    let s = redis.store("n");
    let mut raw = redis.raw();
    let flush = || redis::cmd("SCRIPT").arg("FLUSH").exec(&mut redis.raw()).unwrap();
    flush();
    assert!(s.put(&Bytes::from_static(b"a"), live(1, b"1")).unwrap().applied);
    flush();
    let items = (0..10)
        .map(|i| Item {
            key: Bytes::from(format!("b{i}")),
            version: 1,
            value: Some(Bytes::from_static(b"v")),
            expires_at: 0,
        })
        .collect();
    assert_eq!(s.put_many(items).unwrap(), 10);
    flush();
    assert_eq!(s.scan(&Id::ZERO, &Id::ZERO, None, 100).unwrap().len(), 11);
    flush();
    assert_eq!(s.delete_many(vec![(Bytes::from_static(b"b1"), 1)]).unwrap(), 1);
    flush();
    assert!(s.delete(b"a", 1).unwrap());
    let n: i64 = redis::cmd("HLEN").arg(s.redis_keys()[0]).query(&mut raw).unwrap();
    assert_eq!(n, 9);
}

#[test]
fn foreign_data_is_reported_corrupt() {
    let redis = RedisServer::start();
    let s = redis.store("n");
    let mut raw = redis.raw();
    let [data, index, _] = s.redis_keys();
    s.put(&Bytes::from_static(b"good"), live(1, b"v")).unwrap();
    // A record too short to hold a version and a tag.
    redis::cmd("HSET")
        .arg(data)
        .arg("bad")
        .arg("xy")
        .exec(&mut raw)
        .unwrap();
    let member = [Id::hash(b"bad").to_string().as_bytes(), b"bad"].concat();
    redis::cmd("ZADD")
        .arg(index)
        .arg(0)
        .arg(member)
        .exec(&mut raw)
        .unwrap();
    let corrupt = |what: &str, r: Result<String, StoreError>| match r {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("redis://"), "{what}: {msg}"),
        other => panic!("{what}: expected Corrupt, got {other:?}"),
    };
    corrupt("get", s.get(b"bad").map(|e| format!("{e:?}")));
    corrupt(
        "put",
        s.put(&Bytes::from_static(b"bad"), live(9, b"v"))
            .map(|o| format!("{o:?}")),
    );
    corrupt("delete", s.delete(b"bad", 9).map(|o| format!("{o:?}")));
    corrupt(
        "scan",
        s.scan(&Id::ZERO, &Id::ZERO, None, 10).map(|o| format!("{o:?}")),
    );
    // The good key is still served.
    assert_eq!(s.get(b"good").unwrap(), Some(live(1, b"v")));
    // Something else wrote a plain string where the hash should be.
    redis::cmd("SET").arg(data).arg("oops").exec(&mut raw).unwrap();
    corrupt(
        "get of a key of the wrong type",
        s.get(b"good").map(|e| format!("{e:?}")),
    );
}

#[test]
fn redis_down_then_back() {
    let mut redis = RedisServer::start();
    let s = Arc::new(redis.store("127.0.0.1:7001"));
    s.put(&Bytes::from_static(b"k"), live(1, b"v")).unwrap();

    redis.kill();
    let calls = Arc::clone(&s);
    bounded("store calls while Redis is down", move || {
        assert_unavailable("get", calls.get(b"k"));
        assert_unavailable("put", calls.put(&Bytes::from_static(b"k"), live(2, b"w")));
        assert_unavailable("delete", calls.delete(b"k", 9));
        assert_unavailable("scan", calls.scan(&Id::ZERO, &Id::ZERO, None, 10));
        assert_unavailable(
            "put_many",
            calls.put_many(vec![Item {
                key: Bytes::from_static(b"x"),
                version: 1,
                value: None,
                expires_at: 0,
            }]),
        );
        assert_unavailable(
            "delete_many",
            calls.delete_many(vec![(Bytes::from_static(b"x"), 1)]),
        );
        assert_unavailable("len", calls.len());
    });

    // A new, empty Redis on the same port: the store reconnects by itself, and says first that
    // its data is gone.
    redis.restart();
    assert_lost("the first get after the restart", s.get(b"k"));
    assert_eq!(s.get(b"k").unwrap(), None, "nothing was persisted");
    assert!(
        s.put(&Bytes::from_static(b"k"), live(3, b"again"))
            .unwrap()
            .applied
    );
    assert_eq!(s.get(b"k").unwrap(), Some(live(3, b"again")));
    assert_eq!(s.len().unwrap(), 1);
}

/// A restart between two calls leaves every pooled connection dead; the next call must not
/// fail because of that, only because the data is gone.
#[test]
fn a_restart_between_calls_reports_the_loss_not_the_dead_connections() {
    let mut redis = RedisServer::start();
    let s = Arc::new(redis.store("n"));
    // Several idle connections in the pool.
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || s.put(&Bytes::from(format!("k{i}")), live(1, b"v")).unwrap())
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    redis.restart();
    assert_lost("len after the restart", s.len());
    assert_eq!(s.len().unwrap(), 0);
    assert!(s.put(&Bytes::from_static(b"k"), live(1, b"v")).unwrap().applied);
    assert_eq!(s.scan(&Id::ZERO, &Id::ZERO, None, 10).unwrap().len(), 1);
}

#[test]
fn a_frozen_redis_times_out_then_recovers() {
    let redis = RedisServer::start();
    let s = Arc::new(redis.store("n"));
    s.put(&Bytes::from_static(b"k"), live(1, b"v")).unwrap();
    redis.pause();
    let calls = Arc::clone(&s);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        bounded("a get while Redis is frozen", move || {
            assert_unavailable("get", calls.get(b"k"));
        })
    }));
    redis.resume();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(s.get(b"k").unwrap(), Some(live(1, b"v")));
}

/// Every kind of operation, run first after Redis restarted without persistence, fails with
/// `Lost` and changes nothing; the loss is counted once, and the same operation then runs on
/// the emptied store. A flushed database is a loss too. A store of another namespace notices
/// its own loss, on its own.
#[test]
fn a_restart_without_persistence_is_reported_once_by_any_operation() {
    let mut redis = RedisServer::start();
    let s = redis.store("127.0.0.1:7001");
    let other = redis.store("127.0.0.1:7002");
    let k = Bytes::from_static(b"k");
    let all = Id::ZERO;
    let item = || Item {
        key: Bytes::from_static(b"m"),
        version: 1,
        value: Some(Bytes::from_static(b"v")),
        expires_at: 0,
    };
    type Op = Box<dyn Fn(&RedisStore) -> Result<String, StoreError>>;
    let ops: Vec<(&str, Op)> = vec![
        ("get", Box::new(|s| s.get(b"k").map(|r| format!("{r:?}")))),
        (
            "put",
            Box::new(move |s| {
                s.put(&Bytes::from_static(b"k"), live(9, b"w"))
                    .map(|r| format!("{r:?}"))
            }),
        ),
        (
            "delete",
            Box::new(|s| s.delete(b"k", 9).map(|r| format!("{r:?}"))),
        ),
        (
            "scan",
            Box::new(move |s| s.scan(&all, &all, None, 10).map(|r| format!("{r:?}"))),
        ),
        (
            "scan_versions",
            Box::new(move |s| s.scan_versions(&all, &all, None, 10).map(|r| format!("{r:?}"))),
        ),
        (
            "count_range",
            Box::new(move |s| s.count_range(&all, &all).map(|r| format!("{r:?}"))),
        ),
        (
            "put_many",
            Box::new(move |s| s.put_many(vec![item()]).map(|r| format!("{r:?}"))),
        ),
        (
            "delete_many",
            Box::new(|s| {
                s.delete_many(vec![(Bytes::from_static(b"m"), 9)])
                    .map(|r| format!("{r:?}"))
            }),
        ),
        ("len", Box::new(|s| s.len().map(|r| format!("{r:?}")))),
    ];
    assert_eq!(s.loss_epoch(), 0);
    for (i, (name, op)) in ops.iter().enumerate() {
        s.put(&k, live(1, b"v")).unwrap();
        redis.restart();
        assert_lost(&format!("{name} after a restart"), op(&s));
        assert_eq!(s.loss_epoch(), i as u64 + 1, "{name}: one loss, counted once");
        let marker: bool = redis::cmd("EXISTS")
            .arg(s.marker_key())
            .query(&mut redis.raw())
            .unwrap();
        assert!(marker, "{name}: the marker is back");
        op(&s).unwrap_or_else(|e| panic!("{name} after the loss was reported: {e}"));
        assert_eq!(s.loss_epoch(), i as u64 + 1, "{name}: reported once");
    }
    let epoch = s.loss_epoch();

    // A flush is a loss too, whatever connection notices it.
    s.put(&k, live(1, b"v")).unwrap();
    redis::cmd("FLUSHDB").exec(&mut redis.raw()).unwrap();
    assert_lost("get after FLUSHDB", s.get(b"k"));
    assert_eq!(s.get(b"k").unwrap(), None);
    assert_eq!(s.loss_epoch(), epoch + 1);

    // The other namespace lost its data in every restart and flush: it reports it once, at its
    // first operation since, and its epoch counts one loss.
    assert_eq!(other.loss_epoch(), 0);
    assert_lost("the other namespace", other.len());
    assert_eq!(other.loss_epoch(), 1);
    assert_eq!(other.len().unwrap(), 0);
}

/// Reads racing with a restart: each answer is from before the loss (the value), or an error,
/// or from after it, and then the loss was counted before the answer came back, so a caller
/// that checks the epoch after each call (`execute_since`) never takes an answer of the
/// emptied store for a real one. Eight threads notice one loss: the epoch counts one.
#[test]
fn reads_racing_with_a_restart_never_answer_from_the_emptied_store_unnoticed() {
    const THREADS: usize = 8;
    let mut redis = RedisServer::start();
    let s = Arc::new(redis.store("127.0.0.1:7001"));
    s.put(&Bytes::from_static(b"k"), live(1, b"v")).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..THREADS)
        .map(|_| {
            let s = Arc::clone(&s);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let (mut before, mut lost, mut failed) = (0u64, 0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let op = store::StoreOp::Get {
                        id: Id::of_key(b"k"),
                        key: Bytes::from_static(b"k"),
                    };
                    match store::execute_since(&*s, op, 0) {
                        Ok(store::StoreOutcome::Got(Some(e))) if e == live(1, b"v") => before += 1,
                        Ok(other) => panic!("an answer from the emptied store got through: {other:?}"),
                        Err(StoreError::Lost(_)) => lost += 1,
                        Err(_) => failed += 1,
                    }
                }
                (before, lost, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    redis.restart();
    // Until every reader has seen the loss a few times.
    let deadline = Instant::now() + CALL_BOUND;
    while s.loss_epoch() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = (0, 0, 0);
    for r in readers {
        let (b, l, f) = r.join().expect("reader");
        total = (total.0 + b, total.1 + l, total.2 + f);
    }
    println!("answers from before the loss, lost, other errors: {total:?}");
    assert!(total.0 > 0 && total.1 > 0, "{total:?}");
    assert_eq!(s.loss_epoch(), 1, "one restart, one loss");
    // The store itself answers from the emptied Redis, once the loss is handled.
    let op = store::StoreOp::Get {
        id: Id::of_key(b"k"),
        key: Bytes::from_static(b"k"),
    };
    assert_eq!(
        store::execute_since(&*s, op, 1).unwrap(),
        store::StoreOutcome::Got(None)
    );
}

/// A Redis restarted with its data (here: nothing was lost, the connections were only cut)
/// is no loss: the marker is still there.
#[test]
fn cut_connections_are_not_a_loss() {
    let redis = RedisServer::start();
    let s = redis.store("n");
    s.put(&Bytes::from_static(b"k"), live(1, b"v")).unwrap();
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .exec(&mut redis.raw())
        .unwrap();
    assert_eq!(s.get(b"k").unwrap(), Some(live(1, b"v")));
    assert_eq!(s.loss_epoch(), 0);
    // A store opened again on the same namespace finds its data: no loss either.
    let again = redis.store("n");
    assert_eq!(again.get(b"k").unwrap(), Some(live(1, b"v")));
    assert_eq!(again.loss_epoch(), 0);
}

// ---- pipelined batches (RedisPartitions) -----------------------------------------------------

fn get(vnode: u16, key: &str) -> (u16, store::StoreOp) {
    (
        vnode,
        store::StoreOp::Get {
            id: Id::of_key(key.as_bytes()),
            key: Bytes::from(key.to_string()),
        },
    )
}

fn put(vnode: u16, key: &str, entry: Entry) -> (u16, store::StoreOp) {
    (
        vnode,
        store::StoreOp::Put {
            id: Id::of_key(key.as_bytes()),
            key: Bytes::from(key.to_string()),
            entry,
        },
    )
}

fn open_partitions(redis: &RedisServer, n: usize) -> RedisPartitions {
    let namespaces: Vec<String> = (0..n).map(|i| format!("127.0.0.1:7001#{i}")).collect();
    RedisPartitions::open(&redis.url(), &namespaces).expect("open the Redis partitions")
}

/// A batch of 1 to 59 random gets, puts and `PutMany`s over `partitions` partitions and `keys`.
fn random_ops(rng: &mut Rng, keys: &[String], partitions: u64) -> Vec<(u16, store::StoreOp)> {
    // Some batches without reads: a pipeline of merges only goes as a transaction (`watched`),
    // one with a read by script.
    let reads = !rng.chance(0.4);
    let ops = if reads {
        rng.range(1, 60)
    } else {
        rng.range(1, 2 * WATCHED_MIN_PUTS as u64)
    };
    (0..ops)
        .map(|_| {
            let vnode = rng.below(partitions) as u16;
            let entry = |rng: &mut Rng| {
                let value = (!rng.chance(0.2)).then(|| Bytes::from(format!("v{}", rng.next_u64())));
                let expires_at = if value.is_some() && rng.chance(0.3) {
                    rng.range(1, 1 << 50)
                } else {
                    0
                };
                Entry {
                    version: rng.range(1, 25),
                    value,
                    expires_at,
                }
            };
            let key = &keys[rng.below(keys.len() as u64) as usize];
            match rng.below(10) {
                0..=4 if reads => get(vnode, key),
                0..=8 => put(vnode, key, entry(rng)),
                // A replica's copy: several entries, maybe none, maybe one key twice.
                _ => (
                    vnode,
                    store::StoreOp::PutMany {
                        items: (0..rng.below(5))
                            .map(|_| {
                                let e = entry(rng);
                                Item {
                                    key: Bytes::from(keys[rng.below(keys.len() as u64) as usize].clone()),
                                    version: e.version,
                                    value: e.value,
                                    expires_at: e.expires_at,
                                }
                            })
                            .collect(),
                    },
                ),
            }
        })
        .collect()
}

/// Random batches of gets, puts and `PutMany`s over three partitions answer exactly what the
/// memory driver answers running the same ops one by one in the same order: merges by version,
/// tombstones, expiries, the same key several times in one batch (a get after a put of it sees
/// it), and the live counts and contents afterwards.
#[test]
fn pipelined_batches_agree_with_ops_one_by_one() {
    let seed = std::env::var("CHORDKV_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xba7c4);
    println!("seed = {seed} (replay with CHORDKV_TEST_SEED={seed})");
    let mut rng = Rng::new(seed);
    let redis = RedisServer::start();
    let parts = open_partitions(&redis, 3);
    let memory: Vec<MemoryStore> = (0..3).map(|_| MemoryStore::new()).collect();
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    for round in 0..300 {
        let ops = random_ops(&mut rng, &keys, 3);
        let expected: Vec<_> = ops
            .iter()
            .map(|(v, op)| store::execute(&memory[usize::from(*v)], op.clone()))
            .collect();
        let got = parts.execute_batch(ops.clone());
        assert_eq!(got.len(), ops.len(), "round {round}: one result per op");
        for (i, ((op, want), got)) in ops.iter().zip(expected).zip(got).enumerate() {
            assert_eq!(got, want, "round {round}, op {i}: {op:?}");
        }
    }
    for (i, (p, m)) in parts.partitions().iter().zip(&memory).enumerate() {
        assert_eq!(p.len().unwrap(), m.len().unwrap(), "partition {i}: live count");
        assert_eq!(
            p.scan(&Id::ZERO, &Id::ZERO, None, 1_000).unwrap(),
            m.scan(&Id::ZERO, &Id::ZERO, None, 1_000).unwrap(),
            "partition {i}: contents"
        );
        assert_eq!(p.loss_epoch(), 0);
    }
}

/// A batch larger than one pipeline, with a flushed script cache: cut into several round
/// trips, the script loaded again, every op answered in order. Other ops (a count) in a batch
/// run alone and are answered in their place.
#[test]
fn large_batches_and_a_flushed_script_cache() {
    let redis = RedisServer::start();
    let parts = open_partitions(&redis, 2);
    redis::cmd("SCRIPT").arg("FLUSH").exec(&mut redis.raw()).unwrap();
    let n = 1_300;
    let mut ops: Vec<_> = (0..n)
        .map(|i| put((i % 2) as u16, &format!("k{i}"), live(1, b"v")))
        .collect();
    ops.push((1, store::StoreOp::Count));
    ops.extend((0..n).map(|i| get((i % 2) as u16, &format!("k{i}"))));
    let results = parts.execute_batch(ops);
    assert_eq!(results.len(), 2 * n + 1);
    for (i, r) in results[..n].iter().enumerate() {
        assert!(
            matches!(r, Ok(store::StoreOutcome::Put(o)) if o.applied && !o.previous_live),
            "put {i}: {r:?}"
        );
    }
    assert_eq!(results[n], Ok(store::StoreOutcome::Count((n / 2) as u64)));
    for (i, r) in results[n + 1..].iter().enumerate() {
        assert_eq!(r, &Ok(store::StoreOutcome::Got(Some(live(1, b"v")))), "get {i}");
    }
}

/// A record something else wrote fails its own op as corrupt, in a get's transaction and in a
/// put call shared with good entries; the other ops of the batch go through.
#[test]
fn corrupt_records_fail_only_their_own_ops_in_a_batch() {
    let redis = RedisServer::start();
    let parts = open_partitions(&redis, 1);
    let [data, _, _] = parts.partitions()[0].redis_keys();
    redis::cmd("HSET")
        .arg(data)
        .arg("bad")
        .arg("xy")
        .exec(&mut redis.raw())
        .unwrap();
    let results = parts.execute_batch(vec![
        put(0, "good", live(1, b"v")),
        put(0, "bad", live(2, b"v")),
        put(0, "good2", live(1, b"w")),
        get(0, "bad"),
        get(0, "good"),
    ]);
    let corrupt = |i: usize| matches!(&results[i], Err(StoreError::Corrupt(m)) if m.contains("redis://"));
    assert!(
        matches!(&results[0], Ok(store::StoreOutcome::Put(o)) if o.applied),
        "{results:?}"
    );
    assert!(corrupt(1), "{:?}", results[1]);
    assert!(
        matches!(&results[2], Ok(store::StoreOutcome::Put(o)) if o.applied),
        "{results:?}"
    );
    assert!(corrupt(3), "{:?}", results[3]);
    assert_eq!(results[4], Ok(store::StoreOutcome::Got(Some(live(1, b"v")))));
    assert_eq!(
        parts.partitions()[0].len().unwrap(),
        2,
        "the bad record is not counted"
    );
}

/// A flush before a batch: every get and put of every partition it touches fails with `Lost`
/// and changes nothing; each partition counts the loss once; the next batch runs on the
/// emptied store.
#[test]
fn a_flush_before_a_batch_fails_every_op_as_lost() {
    let redis = RedisServer::start();
    let parts = open_partitions(&redis, 3);
    let before = parts.execute_batch(vec![put(0, "a", live(1, b"v")), put(1, "b", live(1, b"v"))]);
    assert!(before.iter().all(|r| r.is_ok()), "{before:?}");
    redis::cmd("FLUSHALL").exec(&mut redis.raw()).unwrap();
    let ops = vec![
        get(0, "a"),
        put(0, "c", live(1, b"v")),
        get(0, "c"),
        put(1, "d", live(1, b"v")),
        get(1, "b"),
        (
            1,
            store::StoreOp::PutMany {
                items: vec![Item {
                    key: Bytes::from_static(b"e"),
                    version: 1,
                    value: None,
                    expires_at: 0,
                }],
            },
        ),
    ];
    for (i, r) in parts.execute_batch(ops.clone()).into_iter().enumerate() {
        assert_lost(&format!("op {i} after the flush"), r);
    }
    for (i, p) in parts.partitions().iter().enumerate() {
        let want = if i < 2 { 1 } else { 0 };
        assert_eq!(
            p.loss_epoch(),
            want,
            "partition {i}: one loss, counted by its own ops only"
        );
    }
    // Nothing was written by the failed ops; the same batch now runs on the emptied store.
    let results = parts.execute_batch(ops);
    assert_eq!(results[0], Ok(store::StoreOutcome::Got(None)));
    assert!(matches!(&results[1], Ok(store::StoreOutcome::Put(o)) if o.applied));
    assert_eq!(results[2], Ok(store::StoreOutcome::Got(Some(live(1, b"v")))));
    assert!(matches!(&results[3], Ok(store::StoreOutcome::Put(o)) if o.applied));
    assert_eq!(results[4], Ok(store::StoreOutcome::Got(None)));
    assert_eq!(results[5], Ok(store::StoreOutcome::PutMany { applied: 1 }));
    assert_eq!(parts.partitions()[2].loss_epoch(), 0);
}

/// The gets of several partitions share one transaction (one `MULTI` ... `EXEC` per run of
/// reads in a pipeline), yet each partition's marker still vouches for its own reads only: with
/// one partition's data gone (its marker deleted, as an eviction would), its gets fail as lost
/// and count its loss once, and the other partitions' gets in the same transaction answer
/// their values. A write between two reads of a partition still comes between them.
#[test]
fn a_loss_in_a_shared_read_transaction_fails_only_its_partitions_gets() {
    let redis = RedisServer::start();
    let parts = open_partitions(&redis, 3);
    let before = parts.execute_batch(vec![
        put(0, "a", live(1, b"va")),
        put(1, "b", live(1, b"vb")),
        put(2, "c", live(1, b"vc")),
    ]);
    assert!(before.iter().all(|r| r.is_ok()), "{before:?}");
    let marker = parts.partitions()[1].marker_key().to_string();
    redis::cmd("DEL").arg(&marker).exec(&mut redis.raw()).unwrap();
    let results = parts.execute_batch(vec![get(0, "a"), get(1, "b"), get(2, "c"), get(0, "x")]);
    assert_eq!(results[0], Ok(store::StoreOutcome::Got(Some(live(1, b"va")))));
    assert_lost("partition 1's get", results[1].clone());
    assert_eq!(results[2], Ok(store::StoreOutcome::Got(Some(live(1, b"vc")))));
    assert_eq!(results[3], Ok(store::StoreOutcome::Got(None)));
    let epochs: Vec<u64> = parts.partitions().iter().map(|p| p.loss_epoch()).collect();
    assert_eq!(epochs, vec![0, 1, 0]);
    // Reads, a write, reads: the second read of partition 0 sees the write.
    let results = parts.execute_batch(vec![
        get(0, "a"),
        get(2, "c"),
        put(0, "a", live(2, b"va2")),
        get(0, "a"),
        get(2, "c"),
    ]);
    assert_eq!(results[0], Ok(store::StoreOutcome::Got(Some(live(1, b"va")))));
    assert_eq!(results[3], Ok(store::StoreOutcome::Got(Some(live(2, b"va2")))));
    assert_eq!(results[4], Ok(store::StoreOutcome::Got(Some(live(1, b"vc")))));
}

/// Flushes racing with two streams of batches (two connections, as the pipe and the store
/// workers use), each batch a put then a get of a fresh key per partition: wherever a flush
/// falls (between batches, between the calls of one pipeline, between a get's `HMGET` and its
/// marker check, while the other stream records the loss and writes the marker again), no get
/// answers "not found" for the key its batch just wrote unless the partition counted a loss
/// during that batch, so a caller checking the epoch (the store workers and the pipe do) never
/// takes the emptied store's answer for a real one. Every flush is noticed.
#[test]
fn flushes_between_the_calls_of_pipelines_are_never_missed() {
    let redis = RedisServer::start();
    let parts = Arc::new(open_partitions(&redis, 2));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let runner = |stream: u32| {
        let parts = Arc::clone(&parts);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut answered, mut lost) = (0u64, 0u64);
            let mut batch = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                batch += 1;
                let epochs: Vec<u64> = parts.partitions().iter().map(|p| p.loss_epoch()).collect();
                let mut ops = Vec::new();
                for v in 0..2u16 {
                    for j in 0..8 {
                        let key = format!("s{stream}-b{batch}-{v}-{j}");
                        ops.push(put(v, &key, live(1, b"v")));
                        ops.push(get(v, &key));
                    }
                }
                let results = parts.execute_batch(ops.clone());
                for (i, ((v, _), r)) in ops.iter().zip(&results).enumerate() {
                    let moved = parts.partitions()[usize::from(*v)].loss_epoch() > epochs[usize::from(*v)];
                    match r {
                        Err(StoreError::Lost(_)) => lost += 1,
                        _ if moved => lost += 1, // the caller discards it
                        Ok(store::StoreOutcome::Got(got)) => {
                            assert_eq!(
                                got,
                                &Some(live(1, b"v")),
                                "batch {batch}, op {i}: the emptied store answered unnoticed"
                            );
                            answered += 1;
                        }
                        Ok(store::StoreOutcome::Put(_)) => answered += 1,
                        other => panic!("batch {batch}, op {i}: {other:?}"),
                    }
                }
            }
            (answered, lost)
        })
    };
    let runners = [runner(0), runner(1)];
    let mut raw = redis.raw();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(15));
        redis::cmd("FLUSHALL").exec(&mut raw).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut answered, mut lost) = (0, 0);
    for r in runners {
        let (a, l) = r.join().expect("the batches");
        answered += a;
        lost += l;
    }
    println!("ops answered {answered}, lost {lost}");
    assert!(answered > 0 && lost > 0, "answered {answered}, lost {lost}");
    // The last flush is noticed by the next batch, if the runner had not seen it yet.
    parts.execute_batch(vec![get(0, "x"), get(1, "x")]);
    for p in parts.partitions() {
        assert!(p.loss_epoch() >= 1, "flushes were noticed");
        assert_eq!(p.get(b"x").unwrap(), None);
    }
}

/// Redis killed while a pipeline waits for its replies: every op of the batch fails with
/// `Unavailable` (none hangs, nothing panics); once Redis is back (empty), the first batch
/// reports the loss and the next one works.
#[test]
fn redis_dying_mid_pipeline_fails_every_op_of_the_batch() {
    let mut redis = RedisServer::start();
    let parts = Arc::new(open_partitions(&redis, 2));
    let ops: Vec<_> = (0..40)
        .map(|i| {
            let v = (i % 2) as u16;
            if i % 3 == 0 {
                get(v, &format!("k{i}"))
            } else {
                put(v, &format!("k{i}"), live(1, b"v"))
            }
        })
        .collect();
    assert!(parts.execute_batch(ops.clone()).iter().all(|r| r.is_ok()));
    redis.pause();
    let batch = {
        let parts = Arc::clone(&parts);
        let ops = ops.clone();
        std::thread::spawn(move || parts.execute_batch(ops))
    };
    // The pipeline is written (the kernel takes it) and waits for replies that never come.
    std::thread::sleep(Duration::from_millis(300));
    redis.kill();
    let results = bounded("a batch whose Redis died", move || {
        batch.join().expect("no panic")
    });
    assert_eq!(results.len(), ops.len());
    for (i, r) in results.into_iter().enumerate() {
        assert_unavailable(&format!("op {i}"), r);
    }
    // While Redis is down, a batch fails as fast as connecting does.
    let down = Arc::clone(&parts);
    let again = ops.clone();
    for (i, r) in bounded("a batch while Redis is down", move || down.execute_batch(again))
        .into_iter()
        .enumerate()
    {
        assert_unavailable(&format!("op {i} while down"), r);
    }
    redis.restart();
    for (i, r) in parts.execute_batch(ops.clone()).into_iter().enumerate() {
        assert_lost(&format!("op {i} after the restart"), r);
    }
    let results = parts.execute_batch(ops);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

// ---- the event loop's pipe (RedisPipe) -------------------------------------------------------

/// A pipe over `parts` and the `mio::Poll` that drives it, as a node's event loop does.
struct PipeDriver {
    pipe: RedisPipe<usize>,
    poll: mio::Poll,
    start: Instant,
}

impl PipeDriver {
    fn new(parts: &Arc<RedisPartitions>) -> PipeDriver {
        PipeDriver {
            pipe: RedisPipe::new(Arc::clone(parts), mio::Token(7)).expect("a TCP Redis makes a pipe"),
            poll: mio::Poll::new().expect("a poll"),
            start: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Submits `ops`, then turns the loop (events, deadlines, flushes, and the flights that
    /// found lost data recorded as a store worker records them) until every op is answered;
    /// fails the test if that takes longer than [`CALL_BOUND`].
    fn run(&mut self, ops: Vec<(u16, store::StoreOp)>) -> Vec<Result<store::StoreOutcome, StoreError>> {
        let n = ops.len();
        for (i, (vnode, op)) in ops.into_iter().enumerate() {
            assert!(RedisPipe::<usize>::carries(&op));
            self.pipe.submit(i, vnode, op);
        }
        let mut results: Vec<Option<Result<store::StoreOutcome, StoreError>>> = vec![None; n];
        let mut answered = 0;
        let mut events = mio::Events::with_capacity(16);
        let bound = Instant::now() + CALL_BOUND;
        loop {
            let now = self.now();
            self.pipe.tick(self.poll.registry(), now);
            self.pipe.flush(self.poll.registry(), now, false);
            let mut done = self.pipe.take_done();
            for losses in self.pipe.take_losses() {
                done.extend(losses.record());
            }
            for (i, r) in done {
                assert!(results[i].is_none(), "op {i} answered twice");
                results[i] = Some(r);
                answered += 1;
            }
            if answered == n {
                assert!(self.pipe.is_idle());
                return results.into_iter().map(Option::unwrap).collect();
            }
            assert!(
                Instant::now() < bound,
                "{answered} of {n} ops answered within {CALL_BOUND:?}"
            );
            self.poll
                .poll(&mut events, Some(Duration::from_millis(20)))
                .expect("poll");
            for event in events.iter() {
                self.pipe.on_event(self.poll.registry(), event, self.now());
            }
        }
    }
}

/// Random batches through the pipe answer exactly what the memory driver answers running the
/// same ops one by one, as the blocking pipelines do (`pipelined_batches_agree_with_ops_one_by_one`).
#[test]
fn the_pipe_agrees_with_ops_one_by_one() {
    let seed = std::env::var("CHORDKV_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x919e);
    println!("seed = {seed} (replay with CHORDKV_TEST_SEED={seed})");
    let mut rng = Rng::new(seed);
    let redis = RedisServer::start();
    let parts = Arc::new(open_partitions(&redis, 3));
    let mut driver = PipeDriver::new(&parts);
    let memory: Vec<MemoryStore> = (0..3).map(|_| MemoryStore::new()).collect();
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    for round in 0..300 {
        let ops = random_ops(&mut rng, &keys, 3);
        let expected: Vec<_> = ops
            .iter()
            .map(|(v, op)| store::execute(&memory[usize::from(*v)], op.clone()))
            .collect();
        let got = driver.run(ops.clone());
        for (i, ((op, want), got)) in ops.iter().zip(expected).zip(got).enumerate() {
            assert_eq!(got, want, "round {round}, op {i}: {op:?}");
        }
    }
    for (i, (p, m)) in parts.partitions().iter().zip(&memory).enumerate() {
        assert_eq!(p.len().unwrap(), m.len().unwrap(), "partition {i}: live count");
        assert_eq!(
            p.scan(&Id::ZERO, &Id::ZERO, None, 1_000).unwrap(),
            m.scan(&Id::ZERO, &Id::ZERO, None, 1_000).unwrap(),
            "partition {i}: contents"
        );
        assert_eq!(p.loss_epoch(), 0);
    }
}

/// More ops than one pipeline takes, with a flushed script cache: several flights, the script
/// loaded again on the pipe's connection, every op answered; a database other than 0 in the
/// URL is selected on the pipe's connection too.
#[test]
fn the_pipe_cuts_flights_reloads_scripts_and_selects_the_database() {
    let redis = RedisServer::start();
    let url = format!("redis://127.0.0.1:{}/3", redis.port());
    let parts = Arc::new(RedisPartitions::open(&url, &["127.0.0.1:7001#0", "127.0.0.1:7001#1"]).unwrap());
    let mut driver = PipeDriver::new(&parts);
    redis::cmd("SCRIPT").arg("FLUSH").exec(&mut redis.raw()).unwrap();
    let n = 1_300;
    let mut ops: Vec<_> = (0..n)
        .map(|i| put((i % 2) as u16, &format!("k{i}"), live(1, b"v")))
        .collect();
    ops.extend((0..n).map(|i| get((i % 2) as u16, &format!("k{i}"))));
    let results = driver.run(ops);
    for (i, r) in results[..n].iter().enumerate() {
        assert!(
            matches!(r, Ok(store::StoreOutcome::Put(o)) if o.applied && !o.previous_live),
            "put {i}: {r:?}"
        );
    }
    for (i, r) in results[n..].iter().enumerate() {
        assert_eq!(r, &Ok(store::StoreOutcome::Got(Some(live(1, b"v")))), "get {i}");
    }
    let mut raw = redis.raw();
    let [data, _, _] = parts.partitions()[0].redis_keys();
    let in_db0: u64 = redis::cmd("HLEN").arg(data).query(&mut raw).unwrap();
    redis::cmd("SELECT").arg(3).exec(&mut raw).unwrap();
    let in_db3: u64 = redis::cmd("HLEN").arg(data).query(&mut raw).unwrap();
    assert_eq!((in_db0, in_db3), (0, (n / 2) as u64));
}

/// The puts of several partitions share one script call, yet each partition answers for
/// itself: with one partition's data gone (its marker deleted, as an eviction would) and
/// another's hash overwritten by something else, their puts fail as lost and as corrupt, on
/// the pipe and in a blocking batch, and the other partitions' puts in the same call are
/// merged (and nothing is written into the lost one).
#[test]
fn a_loss_in_a_shared_put_call_fails_only_its_partitions_puts() {
    let redis = RedisServer::start();
    let parts = Arc::new(open_partitions(&redis, 4));
    let before = parts.execute_batch((0..4).map(|p| put(p, "a", live(1, b"v"))).collect());
    assert!(before.iter().all(|r| r.is_ok()), "{before:?}");
    let marker = parts.partitions()[1].marker_key().to_string();
    let [data2, _, _] = parts.partitions()[2].redis_keys();
    let mut raw = redis.raw();
    redis::cmd("DEL").arg(&marker).exec(&mut raw).unwrap();
    redis::cmd("SET").arg(data2).arg("oops").exec(&mut raw).unwrap();
    let batch = |version: u64| -> Vec<(u16, store::StoreOp)> {
        (0..4u16)
            .flat_map(|p| [put(p, "a", live(version, b"w")), put(p, "b", live(version, b"w"))])
            .collect()
    };
    let check = |what: &str, results: Vec<Result<store::StoreOutcome, StoreError>>, version: u64| {
        for (i, r) in results.into_iter().enumerate() {
            match i / 2 {
                1 => assert_lost(&format!("{what}: partition 1's put {i}"), r),
                2 => assert!(
                    matches!(r, Err(StoreError::Corrupt(_))),
                    "{what}: partition 2's put {i}: {r:?}"
                ),
                _ => assert!(
                    matches!(&r, Ok(store::StoreOutcome::Put(o)) if o.applied && o.previous_live == (i % 2 == 0 || version > 2)),
                    "{what}: put {i}: {r:?}"
                ),
            }
        }
    };
    check("blocking", parts.execute_batch(batch(2)), 2);
    assert_eq!(parts.partitions()[1].loss_epoch(), 1);
    // The loss is recorded: partition 1 runs on the emptied store again. Lose it once more.
    redis::cmd("DEL").arg(&marker).exec(&mut raw).unwrap();
    check("pipe", PipeDriver::new(&parts).run(batch(3)), 3);
    for p in [0, 3] {
        assert_eq!(parts.partitions()[p].len().unwrap(), 2, "partition {p}");
        assert_eq!(parts.partitions()[p].get(b"b").unwrap(), Some(live(3, b"w")));
    }
    // The same with enough puts for a transaction (`WATCHED_MIN_PUTS`, the others in partition
    // 3): its read finds a marker missing, and the pipeline goes by script after an UNWATCH.
    let padded = |version: u64| {
        let mut ops = batch(version);
        ops.extend((0..WATCHED_MIN_PUTS).map(|i| put(3, &format!("pad{i}"), live(version, b"w"))));
        ops
    };
    for (what, version) in [("blocking, padded", 4), ("pipe, padded", 5)] {
        redis::cmd("DEL").arg(&marker).exec(&mut raw).unwrap();
        let mut results = if version == 4 {
            parts.execute_batch(padded(version))
        } else {
            PipeDriver::new(&parts).run(padded(version))
        };
        for (i, r) in results.drain(8..).enumerate() {
            assert!(
                matches!(&r, Ok(store::StoreOutcome::Put(o)) if o.applied && o.previous_live == (version > 4)),
                "{what}: padding put {i}: {r:?}"
            );
        }
        check(what, results, version);
    }
    assert_eq!(parts.partitions()[1].loss_epoch(), 4);
    let [data1, _, _] = parts.partitions()[1].redis_keys();
    let written: u64 = redis::cmd("HEXISTS").arg(data1).arg("b").query(&mut raw).unwrap();
    assert_eq!(written, 0, "nothing written into the lost partition");
    // A partition whose index is of the wrong type: its put of a new key fails as corrupt, the
    // other partition's put goes through. By script (a batch that also reads) the put writes
    // no record either (a record without its index member would never be scanned, and a retry
    // would find it there and not add the member); merged in a transaction (a batch of puts
    // only: `watched`), the record is written before the `ZADD` fails, and the partition's
    // index, overwritten by something else, has lost every member anyway.
    let [data3, index3, _] = parts.partitions()[3].redis_keys();
    redis::cmd("SET").arg(index3).arg("oops").exec(&mut raw).unwrap();
    for (what, key, read) in [("by script", "new", true), ("in a transaction", "new2", false)] {
        let mut batch = vec![put(3, key, live(1, b"w")), put(0, key, live(1, b"w"))];
        if read {
            batch.push(get(0, "a"));
        } else {
            batch.extend((0..WATCHED_MIN_PUTS).map(|i| put(0, &format!("more{i}"), live(1, b"w"))));
        }
        let results = parts.execute_batch(batch);
        assert!(
            matches!(results[0], Err(StoreError::Corrupt(_))),
            "{what}: {:?}",
            results[0]
        );
        assert!(
            matches!(&results[1], Ok(store::StoreOutcome::Put(o)) if o.applied),
            "{what}: {:?}",
            results[1]
        );
    }
    let written: u64 = redis::cmd("HEXISTS")
        .arg(data3)
        .arg("new")
        .query(&mut raw)
        .unwrap();
    assert_eq!(written, 0, "no record without its index member, by script");
}

/// One replica's copy of more entries than one call of the put script takes (its values go to
/// Redis' Lua stack: `PUTS_MAX_ENTRIES`), on the pipe (which sends an op's entries in one
/// flight however many) and in a blocking batch: split into several calls, each entry merged
/// in order (a key given twice, in another call, keeps its newer version), the live count
/// right.
#[test]
fn a_copy_larger_than_one_script_call_is_merged_whole() {
    let redis = RedisServer::start();
    let parts = Arc::new(open_partitions(&redis, 2));
    let n = 3 * chordkv_server::store::redis::PUTS_MAX_ENTRIES + 7;
    let copy = |vnode: u16| {
        (
            vnode,
            store::StoreOp::PutMany {
                // Each key twice, the second time newer (k0's first version with an expiry).
                items: (0..2 * n)
                    .map(|i| Item {
                        key: Bytes::from(format!("k{}", i % n)),
                        version: 1 + (i / n) as u64,
                        value: Some(Bytes::from(format!("v{i}"))),
                        expires_at: if i == 0 { 1 << 50 } else { 0 },
                    })
                    .collect(),
            },
        )
    };
    let pipe = PipeDriver::new(&parts).run(vec![copy(0)]);
    let blocking = parts.execute_batch(vec![copy(1)]);
    let memory = MemoryStore::new();
    let want = store::execute(&memory, copy(0).1);
    assert_eq!(want, Ok(store::StoreOutcome::PutMany { applied: 2 * n }));
    assert_eq!(pipe, vec![want.clone()], "through the pipe");
    assert_eq!(blocking, vec![want], "in a blocking batch");
    for (i, p) in parts.partitions().iter().enumerate() {
        assert_eq!(p.len().unwrap(), n as u64, "partition {i}: live count");
        assert_eq!(
            p.scan(&Id::ZERO, &Id::ZERO, None, 100_000).unwrap(),
            memory.scan(&Id::ZERO, &Id::ZERO, None, 100_000).unwrap(),
            "partition {i}: contents"
        );
    }
}

/// An error reply fails its own call's ops only, on the pipe as in a blocking pipeline.
#[test]
fn the_pipe_fails_only_the_ops_of_a_corrupt_record() {
    let redis = RedisServer::start();
    let parts = Arc::new(open_partitions(&redis, 2));
    let mut driver = PipeDriver::new(&parts);
    let [data, _, _] = parts.partitions()[0].redis_keys();
    redis::cmd("HSET")
        .arg(data)
        .arg("bad")
        .arg("xy")
        .exec(&mut redis.raw())
        .unwrap();
    let results = driver.run(vec![
        put(0, "good", live(1, b"v")),
        put(0, "bad", live(2, b"v")),
        get(0, "bad"),
        get(1, "bad"),
        put(1, "bad", live(2, b"v")),
    ]);
    assert!(
        matches!(&results[0], Ok(store::StoreOutcome::Put(o)) if o.applied),
        "{results:?}"
    );
    assert!(matches!(&results[1], Err(StoreError::Corrupt(_))), "{results:?}");
    assert!(matches!(&results[2], Err(StoreError::Corrupt(_))), "{results:?}");
    assert_eq!(results[3], Ok(store::StoreOutcome::Got(None)));
    assert!(
        matches!(&results[4], Ok(store::StoreOutcome::Put(o)) if o.applied),
        "{results:?}"
    );
}

/// A flush: every op of the partitions the pipe's flight touched fails with `Lost`, each
/// partition's epoch raised once however many flights saw the loss, the marker written again;
/// then the pipe runs on the emptied store.
#[test]
fn the_pipe_reports_a_loss_once_per_partition() {
    let redis = RedisServer::start();
    let parts = Arc::new(open_partitions(&redis, 3));
    let mut driver = PipeDriver::new(&parts);
    let before = driver.run(vec![put(0, "a", live(1, b"v")), put(1, "b", live(1, b"v"))]);
    assert!(before.iter().all(|r| r.is_ok()), "{before:?}");
    redis::cmd("FLUSHALL").exec(&mut redis.raw()).unwrap();
    // Two flights see the loss before it is recorded: more than one pipeline's worth of ops.
    let mut ops = vec![get(0, "a"), put(0, "c", live(1, b"v")), get(1, "b")];
    ops.extend((0..600).map(|i| put((i % 2) as u16, &format!("x{i}"), live(1, b"v"))));
    let lost = driver.run(ops.clone());
    let epochs: Vec<u64> = parts.partitions().iter().map(|p| p.loss_epoch()).collect();
    for (i, (r, (vnode, _))) in lost.into_iter().zip(&ops).enumerate() {
        match r {
            // A flight of puts only sends its writes by script once its read found a marker
            // missing, which may be after the loss was recorded: its puts then land in the
            // emptied store, and their answers come after the partition's epoch moved, which
            // makes the node discard them as lost (`execute_since`, the store pool's check).
            Ok(store::StoreOutcome::Put(_)) if epochs[usize::from(*vnode)] > 0 => {}
            r => assert_lost(&format!("op {i} after the flush"), r),
        }
    }
    assert_eq!(
        epochs,
        vec![1, 1, 0],
        "one loss each, counted by the partitions the ops touched"
    );
    let results = driver.run(ops);
    assert_eq!(results[0], Ok(store::StoreOutcome::Got(None)));
    assert!(results[1..].iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(results[2], Ok(store::StoreOutcome::Got(None)));
}

/// Redis down: the pipe's ops fail `Unavailable` as fast as connecting does; Redis frozen: they
/// fail within the driver's I/O timeout; Redis back: the pipe connects again.
#[test]
fn the_pipe_never_hangs_on_a_redis_down_or_frozen() {
    let mut redis = RedisServer::start();
    let parts = Arc::new(open_partitions(&redis, 2));
    let mut driver = PipeDriver::new(&parts);
    let ops: Vec<_> = (0..20)
        .map(|i| {
            if i % 2 == 0 {
                put((i % 2) as u16, &format!("k{i}"), live(1, b"v"))
            } else {
                get((i % 2) as u16, &format!("k{i}"))
            }
        })
        .collect();
    assert!(driver.run(ops.clone()).iter().all(|r| r.is_ok()));
    redis.pause();
    for (i, r) in driver.run(ops.clone()).into_iter().enumerate() {
        assert_unavailable(&format!("op {i} while Redis is frozen"), r);
    }
    redis.resume();
    assert!(
        driver.run(ops.clone()).iter().all(|r| r.is_ok()),
        "a new connection after the timeout"
    );
    redis.kill();
    for (i, r) in driver.run(ops.clone()).into_iter().enumerate() {
        assert_unavailable(&format!("op {i} while Redis is down"), r);
    }
    redis.restart();
    for (i, r) in driver.run(ops.clone()).into_iter().enumerate() {
        assert_lost(&format!("op {i} after the restart"), r);
    }
    let results = driver.run(ops);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
}

/// Versions compare as 64-bit integers whichever byte tells them apart, in every script that
/// compares them: a put (`LUA_PUT`), the puts of a pipeline (`LUA_PUTS`), a delete up to a
/// version (`LUA_DELETE`).
#[test]
fn versions_compare_at_every_byte() {
    let redis = RedisServer::start();
    let store = redis.store("127.0.0.1:7001");
    let parts = open_partitions(&redis, 1);
    // Each pair first differs at another byte, the top bit last.
    let highers = (1..8).map(|byte| 1u64 << (8 * byte)).chain([2, 1 << 63]);
    for higher in highers {
        let low = higher - 1;
        let key = format!("k{higher:x}");
        let what = format!("versions {low:#x} and {higher:#x}");
        // One by one.
        assert!(
            store
                .put(&Bytes::from(key.clone()), live(low, b"a"))
                .unwrap()
                .applied,
            "{what}"
        );
        assert!(
            store
                .put(&Bytes::from(key.clone()), live(higher, b"b"))
                .unwrap()
                .applied,
            "{what}"
        );
        assert!(
            !store
                .put(&Bytes::from(key.clone()), live(low, b"c"))
                .unwrap()
                .applied,
            "{what}"
        );
        assert!(
            !store.delete(key.as_bytes(), low).unwrap(),
            "{what}: a delete up to an older version"
        );
        assert!(
            store.delete(key.as_bytes(), higher).unwrap(),
            "{what}: a delete up to its version"
        );
        // Pipelined.
        let results = parts.execute_batch(vec![
            put(0, &key, live(low, b"a")),
            put(0, &key, live(higher, b"b")),
            put(0, &key, live(low, b"c")),
            get(0, &key),
        ]);
        let applied: Vec<bool> = results[..3]
            .iter()
            .map(|r| matches!(r, Ok(store::StoreOutcome::Put(o)) if o.applied))
            .collect();
        assert_eq!(applied, vec![true, true, false], "{what}");
        assert_eq!(
            results[3],
            Ok(store::StoreOutcome::Got(Some(live(higher, b"b")))),
            "{what}"
        );
    }
}
/// A first flight that needs no Redis (an empty `PutMany`) on a new connection does not leave
/// the prelude (`SELECT`) behind: the next flight still selects the database first and reads
/// its own replies.
#[test]
fn the_pipe_sends_the_prelude_with_the_first_flight_that_needs_redis() {
    let redis = RedisServer::start();
    let url = format!("redis://127.0.0.1:{}/5", redis.port());
    let parts = Arc::new(RedisPartitions::open(&url, &["127.0.0.1:7001#0"]).unwrap());
    let mut driver = PipeDriver::new(&parts);
    let empty = (0, store::StoreOp::PutMany { items: Vec::new() });
    assert_eq!(
        driver.run(vec![empty.clone()]),
        vec![Ok(store::StoreOutcome::PutMany { applied: 0 })]
    );
    let results = driver.run(vec![empty, put(0, "k", live(1, b"v")), get(0, "k")]);
    assert_eq!(results[0], Ok(store::StoreOutcome::PutMany { applied: 0 }));
    assert!(
        matches!(&results[1], Ok(store::StoreOutcome::Put(o)) if o.applied),
        "{results:?}"
    );
    assert_eq!(results[2], Ok(store::StoreOutcome::Got(Some(live(1, b"v")))));
    let mut raw = redis.raw();
    redis::cmd("SELECT").arg(5).exec(&mut raw).unwrap();
    let [data, _, _] = parts.partitions()[0].redis_keys();
    let n: u64 = redis::cmd("HLEN").arg(data).query(&mut raw).unwrap();
    assert_eq!(n, 1, "the key is in database 5");
}

/// A TCP relay between the driver and `redis-server` that can hold one pipeline in the middle:
/// once armed with byte patterns, the first write from the driver that contains them all is
/// passed on up to the last of them, and the rest waits until [`Relay::release`].
/// [`Relay::held`] returns once Redis has answered what went through.
struct Relay {
    port: u16,
    armed: Arc<std::sync::Mutex<Option<Vec<Vec<u8>>>>>,
    held: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

/// Reads `from` until it closes, handing each chunk read to `pass` with `to`; stops at the
/// first error.
fn copy(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    mut pass: impl FnMut(&[u8], &mut std::net::TcpStream) -> std::io::Result<()>,
) {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if pass(&buf[..n], &mut to).is_err() {
                    return;
                }
            }
        }
    }
}

impl Relay {
    fn start(to: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let armed: Arc<std::sync::Mutex<Option<Vec<Vec<u8>>>>> = Arc::default();
        let (held_tx, held) = mpsc::channel::<()>();
        let (release, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        let shared = Arc::clone(&armed);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                    return;
                };
                let (armed, held_tx, release_rx) =
                    (Arc::clone(&shared), held_tx.clone(), Arc::clone(&release_rx));
                // Set when this connection holds a pipeline: its next reply bytes mean that
                // Redis answered what went through.
                let holding = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (c_in, s_out) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let (s_in, c_out) = (server, client);
                let up_holding = Arc::clone(&holding);
                std::thread::spawn(move || {
                    copy(c_in, s_out, |chunk, s_out| {
                        let cut = {
                            let mut armed = armed.lock().unwrap();
                            let at = armed.as_ref().and_then(|patterns| {
                                patterns
                                    .iter()
                                    .map(|p| chunk.windows(p.len()).position(|w| w == &p[..]))
                                    .collect::<Option<Vec<usize>>>()
                                    .and_then(|at| at.into_iter().max())
                            });
                            if at.is_some() {
                                *armed = None;
                            }
                            at
                        };
                        let Some(at) = cut else {
                            return s_out.write_all(chunk);
                        };
                        up_holding.store(true, std::sync::atomic::Ordering::SeqCst);
                        s_out.write_all(&chunk[..at])?;
                        let _ = release_rx.lock().unwrap().recv();
                        s_out.write_all(&chunk[at..])
                    })
                });
                std::thread::spawn(move || {
                    copy(s_in, c_out, |chunk, c_out| {
                        c_out.write_all(chunk)?;
                        if holding.swap(false, std::sync::atomic::Ordering::SeqCst) {
                            let _ = held_tx.send(());
                        }
                        Ok(())
                    })
                });
            }
        });
        Relay {
            port,
            armed,
            held,
            release,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Holds the next pipeline that contains every one of `patterns` from the last of them on.
    fn arm(&self, patterns: &[&[u8]]) {
        *self.armed.lock().unwrap() = Some(patterns.iter().map(|p| p.to_vec()).collect());
    }

    /// Waits until a pipeline is held and Redis answered its part before the cut.
    fn held(&self) {
        self.held
            .recv_timeout(CALL_BOUND)
            .expect("a pipeline was held and its first part answered");
    }

    fn release(&self) {
        self.release.send(()).expect("the relay runs");
    }
}

/// A get's marker check is a separate command after its read (no transaction), so a loss can
/// fall between the two; held there by a relay, deterministically, in the two ways it can:
///
/// - the data flushed between them: the read saw the data, the marker check finds it gone, and
///   the get fails as lost (it would have answered the data, which was true when read);
/// - the data flushed before the read, and the loss recorded (the loss epoch raised, the marker
///   written again) by another connection between them: the read saw the emptied store and the
///   marker check finds the new marker, so the get answers "not found", but only after the loss
///   epoch was raised: a caller that checks the epoch (the store workers, the event loop's pipe)
///   discards it. A marker check before the read would let a flush between them go unseen.
#[test]
fn a_loss_between_a_gets_read_and_its_marker_check_never_passes_for_data() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port());
    let parts = Arc::new(
        RedisPartitions::open(&relay.url(), &["127.0.0.1:7001#0"])
            .expect("open the partitions through the relay"),
    );
    // The get's two commands, held after whichever goes first.
    let between: [&[u8]; 2] = [b"*2\r\n$6\r\nEXISTS\r\n", b"\r\n$5\r\nHMGET\r\n"];
    let in_flight = |parts: &Arc<RedisPartitions>| {
        let parts = Arc::clone(parts);
        std::thread::spawn(move || parts.execute_batch(vec![get(0, "a")]))
    };

    // Flushed between the read and the check.
    assert!(parts.execute_batch(vec![put(0, "a", live(1, b"va"))])[0].is_ok());
    relay.arm(&between);
    let reading = in_flight(&parts);
    relay.held();
    redis::cmd("FLUSHALL").exec(&mut redis.raw()).unwrap();
    relay.release();
    let results = bounded("the held get", move || reading.join().expect("no panic"));
    assert_lost("a get whose data was flushed after its read", results[0].clone());
    assert_eq!(parts.partitions()[0].loss_epoch(), 1);

    // Flushed before the read; the loss recorded by another connection before the check.
    assert!(parts.execute_batch(vec![put(0, "a", live(1, b"va"))])[0].is_ok());
    redis::cmd("FLUSHALL").exec(&mut redis.raw()).unwrap();
    let epoch = parts.partitions()[0].loss_epoch();
    relay.arm(&between);
    let reading = in_flight(&parts);
    relay.held();
    let other = parts.execute_batch(vec![get(0, "x")]);
    assert_lost("the other connection's get", other[0].clone());
    assert!(
        parts.partitions()[0].loss_epoch() > epoch,
        "the other connection recorded the loss"
    );
    relay.release();
    let results = bounded("the held get", move || reading.join().expect("no panic"));
    match &results[0] {
        Err(StoreError::Lost(_)) => {}
        Ok(store::StoreOutcome::Got(None)) => {
            // The emptied store's answer, returned after the epoch moved: discarded by a
            // caller that checks it, as every caller in the node does.
            assert!(parts.partitions()[0].loss_epoch() > epoch);
        }
        other => panic!("the held get answered {other:?}"),
    }
}

/// A pipeline of merges only is read under `WATCH` and written in a transaction (`watched`); a
/// write by another connection between the read and the `EXEC` (held there by a relay) makes
/// Redis refuse the transaction, and the merges go again by script against what that
/// connection wrote: the held put of an older version is not applied, the held put of another
/// key is, and nothing newer is overwritten, in a blocking batch and on the pipe.
#[test]
fn a_write_between_the_read_and_the_exec_of_merges_is_never_overwritten() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.port());
    let parts = Arc::new(
        RedisPartitions::open(&relay.url(), &["127.0.0.1:7001#0"])
            .expect("open the partitions through the relay"),
    );
    let other = redis.store("127.0.0.1:7001#0");
    // The read stage, held before its marker check (the `HMGET` answered).
    let read_stage: [&[u8]; 2] = [b"WATCH", b"\r\n$6\r\nEXISTS\r\n"];
    // Puts of `a` and `b`, and enough others for a transaction (`WATCHED_MIN_PUTS`).
    let merges = |a: &str, b: &str| {
        let mut batch = vec![put(0, a, live(3, b"held")), put(0, b, live(3, b"held"))];
        batch.extend((0..WATCHED_MIN_PUTS).map(|i| put(0, &format!("{a}{i}"), live(3, b"held"))));
        batch
    };
    let check = |what: &str,
                 results: &[Result<store::StoreOutcome, StoreError>],
                 a: &str,
                 b: &str,
                 newer: u64,
                 live_count: u64| {
        assert!(
            matches!(&results[0], Ok(store::StoreOutcome::Put(o)) if !o.applied && o.previous_live),
            "{what}: the held put of {a}: {results:?}"
        );
        assert!(
            matches!(&results[1], Ok(store::StoreOutcome::Put(o)) if o.applied),
            "{what}: the held put of {b}: {results:?}"
        );
        assert_eq!(
            other.get(a.as_bytes()).unwrap(),
            Some(live(newer, b"other")),
            "{what}"
        );
        assert_eq!(other.get(b.as_bytes()).unwrap(), Some(live(3, b"held")), "{what}");
        assert_eq!(
            other.len().unwrap(),
            live_count + (live_count / 2) * WATCHED_MIN_PUTS as u64,
            "{what}: the live count"
        );
    };

    assert!(parts.execute_batch(vec![put(0, "a", live(1, b"v"))])[0].is_ok());
    relay.arm(&read_stage);
    let batch = {
        let parts = Arc::clone(&parts);
        std::thread::spawn(move || parts.execute_batch(merges("a", "b")))
    };
    relay.held();
    assert!(other.put(&Bytes::from("a"), live(5, b"other")).unwrap().applied);
    relay.release();
    let results = bounded("the held batch", move || batch.join().expect("no panic"));
    check("blocking", &results, "a", "b", 5, 2);

    // On the pipe: the relay released by a helper once the other connection wrote.
    let mut driver = PipeDriver::new(&parts);
    assert!(driver.run(vec![put(0, "c", live(1, b"v"))])[0].is_ok());
    relay.arm(&read_stage);
    let helper = {
        let other = redis.store("127.0.0.1:7001#0");
        std::thread::spawn(move || {
            relay.held();
            assert!(other.put(&Bytes::from("c"), live(7, b"other")).unwrap().applied);
            relay.release();
        })
    };
    let results = driver.run(merges("c", "d"));
    helper.join().expect("the helper");
    check("pipe", &results, "c", "d", 7, 4);
}

/// The stages `WATCH`, `MULTI` and `EXEC` run in a redis-server, per `INFO commandstats`:
/// `(WATCH calls, EVALSHA calls)`.
fn transaction_calls(raw: &mut redis::Connection) -> (u64, u64) {
    let info: String = redis::cmd("INFO").arg("commandstats").query(raw).unwrap();
    let calls = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (calls("watch"), calls("evalsha"))
}

/// A partition that holds a large record goes by script (a transaction's read would bring the
/// record back whole, `watched::LARGE_RECORD_BYTES`), whether this process wrote it or an
/// earlier one did (found by the first read); a server that refuses `WATCH` or `MULTI` (an
/// ACL) gets scripts, on the pipe and in blocking batches, and every merge is answered and
/// stored as the memory driver would.
#[test]
fn merges_go_by_script_where_a_transaction_would_not_do() {
    let redis = RedisServer::start();
    let mut raw = redis.raw();
    let batch = |vnode: u16, version: u64, value: &[u8]| -> Vec<(u16, store::StoreOp)> {
        (0..WATCHED_MIN_PUTS)
            .map(|i| put(vnode, &format!("k{i}"), live(version, value)))
            .collect()
    };
    let applied = |results: &[Result<store::StoreOutcome, StoreError>]| {
        results
            .iter()
            .all(|r| matches!(r, Ok(store::StoreOutcome::Put(o)) if o.applied))
    };
    let large = vec![b'x'; LARGE_RECORD_BYTES + 1];

    // An earlier process left a large record in partition 0: the first transaction reads it
    // back, the next batches of that partition go by script; partition 1 keeps transactions.
    let earlier = open_partitions(&redis, 2);
    assert!(applied(&earlier.execute_batch(batch(0, 1, &large))));
    drop(earlier);
    let parts = Arc::new(open_partitions(&redis, 2));
    let before = transaction_calls(&mut raw);
    assert!(applied(&parts.execute_batch(batch(0, 2, b"small"))));
    let first = transaction_calls(&mut raw);
    assert_eq!(first.0, before.0 + 1, "the first batch went as a transaction");
    assert!(applied(&parts.execute_batch(batch(0, 3, b"small"))));
    assert!(applied(&PipeDriver::new(&parts).run(batch(0, 4, b"small"))));
    let then = transaction_calls(&mut raw);
    assert_eq!(then.0, first.0, "no transaction after the large record was seen");
    assert_eq!(then.1, first.1 + 2, "by script");
    assert!(applied(&parts.execute_batch(batch(1, 1, b"small"))));
    assert_eq!(
        transaction_calls(&mut raw).0,
        then.0 + 1,
        "partition 1 keeps transactions"
    );
    // Written by this process: noted at once.
    assert!(applied(&parts.execute_batch(batch(1, 2, &large))));
    let at = transaction_calls(&mut raw);
    assert!(applied(&parts.execute_batch(batch(1, 3, b"small"))));
    assert_eq!(
        transaction_calls(&mut raw).0,
        at.0,
        "partition 1 by script once it holds a large record"
    );
    assert_eq!(parts.partitions()[0].get(b"k0").unwrap(), Some(live(4, b"small")));

    // WATCH refused by an ACL, then MULTI, after the partitions were opened (the probe at open
    // passed): the refusal comes with the read stage, before any write, and every batch is
    // answered and stored by script.
    for refused in ["-watch", "-multi", "-discard"] {
        let parts = Arc::new(open_partitions(&redis, 1));
        let mut driver = PipeDriver::new(&parts);
        let memory = MemoryStore::new();
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg(refused)
            .exec(&mut raw)
            .unwrap();
        for (round, version) in (10..14).enumerate() {
            let ops: Vec<_> = (0..WATCHED_MIN_PUTS)
                .map(|i| put(0, &format!("{refused}{i}"), live(version, b"v")))
                .collect();
            let want: Vec<_> = ops
                .iter()
                .map(|(_, op)| store::execute(&memory, op.clone()))
                .collect();
            let got = if round % 2 == 0 {
                parts.execute_batch(ops)
            } else {
                driver.run(ops)
            };
            assert_eq!(got, want, "{refused}, round {round}");
        }
        // Opened while refused: the probe at open finds it (and leaves no half-open
        // transaction on the connection it hands on).
        let fresh = open_partitions(&redis, 1);
        let ops: Vec<_> = (0..WATCHED_MIN_PUTS)
            .map(|i| put(0, &format!("{refused}-fresh{i}"), live(1, b"v")))
            .collect();
        assert!(
            applied(&fresh.execute_batch(ops)),
            "{refused}: opened while refused"
        );
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg("+@all")
            .exec(&mut raw)
            .unwrap();
    }
}
