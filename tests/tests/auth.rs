//! Client credentials and protected mode (issue 13, item 3), with real clients: the `redis`
//! crate, `redis-cli`, the binary client and the `chordkv` command.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use chordkv_client::{Access, Client, ClientError, Credentials};
use chordkv_harness::cluster::{LocalCluster, NetworkMode};
use chordkv_harness::netns;
use chordkv_protocol::ErrorCode;
use chordkv_server::keyring::generate_key;
use chordkv_tests::*;
use redis::RedisResult;

/// The SHA-256 of `text` in hex, as `printf %s TEXT | sha256sum` gives it for a users file.
fn sha256_hex(text: &str) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

/// A 2-node ring with a keyring, `--requirepass admin-pw` and a users file: `reader`
/// (read only, its password hashed) and `writer` (read and write, in plain text).
fn secured_ring(name: &str) -> LocalCluster {
    let spec = cluster_spec(name, 2);
    let dir = spec.log_dir.clone().expect("a log directory");
    std::fs::write(dir.join("ring.key"), generate_key()).expect("keyring");
    let reader_hash = sha256_hex("reader-pw");
    std::fs::write(
        dir.join("users"),
        format!(
            "# test users\nuser reader on #{reader_hash} ~* +@read\nuser writer >writer-pw +@read +@write\n"
        ),
    )
    .expect("users file");
    let mut spec = with_args(
        spec,
        &[
            "--keyring",
            dir.join("ring.key").to_str().unwrap(),
            "--users",
            dir.join("users").to_str().unwrap(),
            "--requirepass",
            "admin-pw",
        ],
    );
    spec.resp = true;
    spec.access.login = Some(creds("default", "admin-pw"));
    start_spec(name, spec)
}

fn creds(user: &str, password: &str) -> Credentials {
    Credentials {
        user: user.into(),
        password: password.as_bytes().to_vec().into(),
    }
}

fn login(user: &str, password: &str) -> Access {
    Access {
        login: Some(creds(user, password)),
        tls: None,
    }
}

fn resp(addr: SocketAddr) -> redis::Connection {
    redis::Client::open(format!("redis://{addr}/"))
        .and_then(|c| c.get_connection())
        .expect("a RESP connection")
}

fn err_text<T: std::fmt::Debug>(r: RedisResult<T>) -> String {
    let e = r.expect_err("an error reply");
    format!(
        "{}{}",
        e.code().unwrap_or(""),
        e.detail().map(|d| format!(" {d}")).unwrap_or_default()
    )
}

#[test]
fn clients_log_in_over_resp_and_the_binary_protocol() {
    let _one = one_at_a_time();
    let cluster = secured_ring("auth");
    let resp_addr = cluster.resp_addr(0).expect("a RESP port");

    // RESP: nothing before AUTH; Redis' words for each refusal.
    let mut con = resp(resp_addr);
    let r: RedisResult<Option<String>> = redis::cmd("GET").arg("k").query(&mut con);
    assert!(err_text(r).starts_with("NOAUTH Authentication required"));
    let r: RedisResult<String> = redis::cmd("PING").query(&mut con);
    assert!(err_text(r).starts_with("NOAUTH"));
    let r: RedisResult<String> = redis::cmd("AUTH").arg("wrong").query(&mut con);
    assert!(err_text(r).starts_with("WRONGPASS invalid username-password pair"));
    let ok: String = redis::cmd("AUTH")
        .arg("reader")
        .arg("reader-pw")
        .query(&mut con)
        .unwrap();
    assert_eq!(ok, "OK");
    let none: Option<String> = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(none, None);
    let r: RedisResult<String> = redis::cmd("SET").arg("k").arg("v").query(&mut con);
    assert_eq!(
        err_text(r),
        "NOPERM User reader has no permissions to run the 'set' command"
    );
    // HELLO 2 AUTH logs in on a new connection; the writer writes.
    let mut con = resp(resp_addr);
    let _: redis::Value = redis::cmd("HELLO")
        .arg(2)
        .arg("AUTH")
        .arg("writer")
        .arg("writer-pw")
        .query(&mut con)
        .unwrap();
    let ok: String = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
    assert_eq!(ok, "OK");
    // The redis crate logs in from the URL.
    let url = format!("redis://writer:writer-pw@{resp_addr}/");
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, "v");

    // redis-cli, with and without -a.
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &resp_addr.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli (tests/run-all.sh installs it)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(cli(&["get", "k"]).contains("NOAUTH"));
    assert_eq!(cli(&["-a", "admin-pw", "--no-auth-warning", "get", "k"]), "v");

    // The binary protocol: LOGIN, then the same permissions.
    let addr = cluster.addr(1);
    let mut anonymous = Client::connect(addr, REQUEST_TIMEOUT).unwrap();
    match anonymous.get("k") {
        Err(ClientError::Server { code, text, .. }) => {
            assert_eq!(code, ErrorCode::Unauthorized);
            assert!(text.starts_with("NOAUTH"), "{text}");
        }
        other => panic!("GET before login: {other:?}"),
    }
    let wrong = Client::connect_as(addr, REQUEST_TIMEOUT, &login("writer", "nope")).unwrap_err();
    assert!(wrong.to_string().contains("WRONGPASS"), "{wrong}");
    let mut reader = Client::connect_as(addr, REQUEST_TIMEOUT, &login("reader", "reader-pw")).unwrap();
    assert_eq!(reader.get("k").unwrap().value.as_deref(), Some(&b"v"[..]));
    match reader.put("k", "x") {
        Err(ClientError::Server { code, text, .. }) => {
            assert_eq!(code, ErrorCode::Forbidden);
            assert!(text.contains("NOPERM User reader"), "{text}");
        }
        other => panic!("PUT as reader: {other:?}"),
    }
    let mut admin = Client::connect_as(addr, REQUEST_TIMEOUT, &login("default", "admin-pw")).unwrap();
    admin.put("k", "w").unwrap();

    // The chordkv command: --password, or CHORDKV_PASSWORD.
    let node = addr.to_string();
    let run = chordkv(&["get", "k", "--node", &node]);
    assert_eq!(run.code(), Some(1));
    assert!(run.stderr.contains("NOAUTH"), "{}", run.stderr);
    let run = chordkv(&["get", "k", "--node", &node, "--password", "admin-pw"]);
    assert_eq!(run.stdout.trim(), "w", "{}", run.stderr);
    let run = chordkv(&[
        "put",
        "k",
        "z",
        "--node",
        &node,
        "--user",
        "reader",
        "--password",
        "reader-pw",
    ]);
    assert_eq!(run.code(), Some(1));
    assert!(run.stderr.contains("NOPERM"), "{}", run.stderr);
}

#[test]
fn credentials_without_a_keyring_are_refused_at_start() {
    let run = chordkv(&["node", "--listen", "127.0.0.1:1", "--requirepass", "x"]);
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stderr.contains("--requirepass and --users need --keyring"),
        "{}",
        run.stderr
    );
}

#[test]
fn protected_mode_refuses_clients_from_other_hosts() {
    if let Some(why) = netns::unavailable() {
        eprintln!("protected_mode: SKIPPED: {why}");
        return;
    }
    let _one = one_at_a_time();
    let name = "protected";
    // In namespaces the nodes listen on the bridge and the test's clients come from the root
    // namespace, another host as far as the nodes can tell.
    let mut spec = with_args(cluster_spec(name, 2), &["--protected-mode", "yes"]);
    spec.network = NetworkMode::Namespaces;
    spec.resp = true;
    let cluster = LocalCluster::start(spec).expect("the nodes start");
    let addr = cluster.addr(0);
    let mut client = Client::connect(addr, REQUEST_TIMEOUT).unwrap();
    match client.get("k") {
        Err(ClientError::Server { text, .. }) => {
            assert!(
                text.starts_with("DENIED chordkv is running in protected mode"),
                "{text}"
            )
        }
        other => panic!("a client from another host: {other:?}"),
    }
    // RESP, as redis-cli speaks it: the first command is answered with the refusal.
    let resp_addr = cluster.resp_addr(0).expect("a RESP port");
    let mut raw = std::net::TcpStream::connect(resp_addr).expect("connect");
    std::io::Write::write_all(&mut raw, b"*1\r\n$4\r\nPING\r\n").expect("send PING");
    raw.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut raw, &mut reply).expect("the refusal, then the close");
    assert!(
        reply.starts_with("-DENIED chordkv is running in protected mode"),
        "{reply:?}"
    );
    // The nodes themselves are peers, not clients: they still form their ring.
    poll_until(CONVERGE_TIMEOUT, "node 1 joins node 0", || {
        let log = cluster.log_path(1).map(std::fs::read_to_string)?.ok()?;
        log.contains("joined the ring").then_some(())
    });
}
