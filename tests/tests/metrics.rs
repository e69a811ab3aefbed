//! `chordkv node --metrics ADDR`: a real node process scraped over HTTP, its `/metrics` parsed
//! with a Prometheus text-format parser; requests through its RESP port make the request
//! counters grow. Bad scrapes (a wrong path, a POST) and an address that cannot be bound.
//!
//! Run with `cargo build --bins && cargo test -p chordkv-tests --test metrics`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};

use chordkv_tests::{
    chordkv, chordkv_bin, poll_until, scratch_dir, ChildGuard, CliCluster, CONVERGE_TIMEOUT, NODE_ARGS,
    REQUEST_TIMEOUT,
};
use prometheus_parse::{Scrape, Value};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
}

/// Sends `method path` and returns the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}

/// Every sample as `name{labels sorted}` -> value.
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (code, body) = http(addr, "GET", "/metrics").expect("scrape /metrics");
    assert_eq!(code, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let parsed = Scrape::parse(lines).expect("a Prometheus text exposition");
    let mut samples = BTreeMap::new();
    for s in parsed.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let value = match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            Value::Histogram(_) | Value::Summary(_) => continue,
        };
        samples.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    samples
}

fn sample(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key} among {:#?}", samples.keys().collect::<Vec<_>>()))
}

#[test]
fn metrics_are_scraped_and_grow_with_requests() {
    let dir = scratch_dir("metrics_scrape");
    let (listen, resp, metrics) = (free_addr(), free_addr(), free_addr());
    let log = dir.join("node.log");
    let child = Command::new(chordkv_bin())
        .args(["node", "--listen", &listen.to_string()])
        .args(["--resp", &resp.to_string(), "--metrics", &metrics.to_string()])
        .args(NODE_ARGS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start a node");
    let _node = ChildGuard::new(child);

    // The node publishes once a second: wait for its first counters from the core.
    let before = poll_until(CONVERGE_TIMEOUT, "/metrics with the core's counters", || {
        http(metrics, "GET", "/metrics").ok()?;
        let s = scrape(metrics);
        s.contains_key("chordkv_keys{}").then_some(s)
    });
    for family in [
        "chordkv_requests_total{command=get,result=ok}",
        "chordkv_request_duration_seconds_count{command=get}",
        "chordkv_connections{kind=client}",
        "chordkv_ring_nodes_known{}",
        "chordkv_ring_size_estimate{}",
        "chordkv_in_ring{}",
        "chordkv_keys_primary{}",
        "chordkv_keys_replica{}",
        "chordkv_store_bytes{}",
        "chordkv_hops_total{}",
        "chordkv_anti_entropy_rounds_total{}",
        "chordkv_stabilize_rounds_total{}",
        "chordkv_leases_held{}",
    ] {
        sample(&before, family);
    }

    let client = redis::Client::open(format!("redis://{resp}/")).expect("a redis URL");
    let mut con = client
        .get_connection_with_timeout(REQUEST_TIMEOUT)
        .expect("connect to the RESP port");
    con.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    for i in 0..20 {
        let key = format!("key-{i}");
        let _: redis::Value = redis::cmd("SET").arg(&key).arg("v").query(&mut con).expect("SET");
        let got: Option<String> = redis::cmd("GET").arg(&key).query(&mut con).expect("GET");
        assert_eq!(got.as_deref(), Some("v"));
    }

    let get_ok = "chordkv_requests_total{command=get,result=ok}";
    let put_ok = "chordkv_requests_total{command=put,result=ok}";
    let after = poll_until(CONVERGE_TIMEOUT, "the requests counted in /metrics", || {
        let s = scrape(metrics);
        (sample(&s, get_ok) >= 20.0 && sample(&s, put_ok) >= 20.0 && sample(&s, "chordkv_keys{}") >= 20.0)
            .then_some(s)
    });
    assert!(sample(&after, get_ok) > sample(&before, get_ok));
    assert!(sample(&after, "chordkv_request_duration_seconds_count{command=put}") >= sample(&after, put_ok));
    assert!(sample(&after, "chordkv_ops_put_total{}") >= 20.0);
    // Every command read on the RESP port, PING included (answered without the ring).
    let _: String = redis::cmd("PING").query(&mut con).expect("PING");
    poll_until(CONVERGE_TIMEOUT, "the PING counted in /metrics", || {
        (sample(&scrape(metrics), "chordkv_resp_commands_total{}") >= 41.0).then_some(())
    });
    // 20 keys of 5 or 6 bytes with one-byte values.
    assert!(sample(&after, "chordkv_store_bytes{}") >= 20.0 * 6.0);
    let (_, text) = http(metrics, "GET", "/metrics").unwrap();
    let inf = "chordkv_request_duration_seconds_bucket{le=\"+Inf\",command=\"put\"} ";
    let count = "chordkv_request_duration_seconds_count{command=\"put\"} ";
    let value_of = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
    };
    assert_eq!(value_of(inf), value_of(count), "the +Inf bucket is the count");
    assert!(sample(&after, "chordkv_connections{kind=client}") >= 1.0);

    // Bad scrapes are answered, and the endpoint serves on.
    assert_eq!(http(metrics, "GET", "/nope").unwrap().0, 404);
    assert_eq!(http(metrics, "POST", "/metrics").unwrap().0, 405);
    let mut garbage = TcpStream::connect(metrics).unwrap();
    garbage.write_all(b"\x00\x01 not http\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = garbage.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    assert_eq!(http(metrics, "GET", "/metrics?x=1").unwrap().0, 200);

    // Scrapers at once are served in turn, every one of them.
    let scrapers: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| http(metrics, "GET", "/metrics").map(|r| r.0))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for s in scrapers {
        for code in s.join().expect("a scraper thread") {
            assert_eq!(code.expect("a scrape"), 200);
        }
    }
}

#[test]
fn an_unbindable_metrics_address_is_a_startup_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let listen = free_addr().to_string();
    let run = chordkv(&["node", "--listen", &listen, "--metrics", &busy]);
    assert_ne!(run.code(), Some(0));
    assert!(
        run.stderr.contains(&busy) && run.stderr.contains("already in use"),
        "{}",
        run.stderr
    );
}

/// Two free consecutive ports on loopback, the first returned (bound and released: a race
/// with another process is possible but unlikely, and fails the test loudly).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let a = free_addr().port();
        if a < u16::MAX && TcpListener::bind(("127.0.0.1", a + 1)).is_ok() {
            return a;
        }
    }
    panic!("no two consecutive free ports in 100 tries");
}

/// `chordkv cluster --metrics-base-port P`: node i serves /metrics on P + i, the addresses
/// come in a `metrics:` line before the ready line, and each node answers there as a member.
#[test]
fn a_local_cluster_serves_metrics_per_node() {
    let base = free_port_pair();
    let mut cluster = CliCluster::start(
        "metrics_cluster",
        &["--nodes", "2", "--metrics-base-port", &base.to_string()],
    );
    let addrs = cluster.addresses("metrics");
    let want: Vec<SocketAddr> = (0..2)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], base + i)))
        .collect();
    assert_eq!(addrs, want);
    assert_eq!(cluster.ready().len(), 2);
    for addr in addrs {
        poll_until(CONVERGE_TIMEOUT, "each node a member on /metrics", || {
            let s = scrape(addr);
            (s.get("chordkv_in_ring{}") == Some(&1.0)).then_some(())
        });
    }
    let status = cluster.stop();
    assert_eq!(status.code(), Some(0), "chordkv cluster: {status}");
}
