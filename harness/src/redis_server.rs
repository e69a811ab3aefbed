//! A real `redis-server` for tests: the Redis driver's conformance tests, cluster tests with
//! `--store redis://...`, and the RESP front end's comparisons. Started as a child process on
//! a free loopback port, with nothing persisted; killed when dropped.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bound of the wait for a started `redis-server` to answer PING.
pub const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process on a free loopback port for the tests that run nodes with
/// `--store redis://...`. Nothing is persisted. Killed when dropped, even when the test panics.
/// Panics if `redis-server` is not installed (`tests/run-all.sh` installs it): these tests must
/// not pass by skipping.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        for _ in 0..10 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("bind a free port")
                .port();
            if let Some(child) = spawn_redis(port) {
                return RedisServer {
                    port,
                    child: Some(child),
                };
            }
        }
        panic!("redis-server did not start on any of 10 free ports");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server with SIGKILL; its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new, empty server on the same port (killing the old one if it runs).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + REDIS_START_TIMEOUT;
        loop {
            if let Some(child) = spawn_redis(self.port) {
                self.child = Some(child);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// Freezes the server (SIGSTOP): the kernel still accepts connections, nothing answers.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a server frozen by [`RedisServer::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Runs one command (arguments as given, binary-safe) on a connection of its own and
    /// returns the reply in RESP form, e.g. `":5"`, `"$-1"`, `"$3\r\nabc"`.
    pub fn command(&self, args: &[&[u8]]) -> String {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis-server");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set a read timeout");
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        s.write_all(&req).expect("send a command to redis-server");
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .expect("read a reply from redis-server");
        let line = line.trim_end().to_string();
        match line.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            Some(len) => {
                let mut body = vec![0u8; len + 2];
                reader.read_exact(&mut body).expect("read a bulk reply");
                body.truncate(len);
                format!("{line}\r\n{}", String::from_utf8_lossy(&body))
            }
            None => line,
        }
    }

    /// The live-key counter the Redis store keeps for the node advertised at `addr` (0 when
    /// the counter does not exist).
    pub fn live_keys_of(&self, addr: SocketAddr) -> u64 {
        let reply = self.command(&[b"GET", format!("ckv:{{{addr}}}:live").as_bytes()]);
        if reply == "$-1" {
            return 0;
        }
        reply
            .split_once("\r\n")
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected reply to GET: {reply:?}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `redis-server` on `port` and waits until it answers PING; `None` if it exited (the
/// port was taken).
fn spawn_redis(port: u16) -> Option<Child> {
    let mut child = match Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("redis-server not found: run tests/run-all.sh, which installs it")
        }
        Err(e) => panic!("cannot start redis-server: {e}"),
    };
    let deadline = Instant::now() + REDIS_START_TIMEOUT;
    loop {
        if redis_pings(port) {
            return Some(child);
        }
        if child.try_wait().expect("try_wait").is_some() {
            return None;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server on port {port} did not answer PING within {REDIS_START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn redis_pings(port: u16) -> bool {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
