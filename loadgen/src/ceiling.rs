//! loadgen's own ceiling: the ops/s it sustains against the fastest target it has.
//!
//! `loadgen --ceiling` runs the workload against [`NullTarget`], an in-process server that
//! speaks the binary protocol and keeps every key in one map: each request is one decode,
//! one map operation and one encode, with no routing, replication or event loop behind it.
//! So the run measures loadgen itself (its threads, the blocking client, loopback TCP and the
//! histograms), sharing the machine's cores with a server that does almost nothing. A real
//! run whose throughput comes close to this ceiling is limited by loadgen, not the cluster.
//!
//! One thread per connection: loadgen's connections are few and long-lived.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{Error, Result};
use bytes::{Bytes, BytesMut};
use chordkv_protocol::frame::{self, Frame};
use chordkv_protocol::{ErrorCode, Message, NodeInfo, NodeRef, NodeStatus};

/// How often an idle connection thread looks at the stop flag.
const READ_POLL: Duration = Duration::from_millis(100);

/// Key -> (version, value), `None` being a deleted key; and the last version stamped.
#[derive(Default)]
struct Map {
    keys: HashMap<Bytes, (u64, Option<Bytes>)>,
    version: u64,
}

impl Map {
    /// Stores `value` under the next version, which it returns with the old value.
    fn write(&mut self, key: Bytes, value: Option<Bytes>) -> (u64, Option<(u64, Option<Bytes>)>) {
        self.version += 1;
        (self.version, self.keys.insert(key, (self.version, value)))
    }
}

/// A running null target; dropping it stops it.
pub struct NullTarget {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl NullTarget {
    /// Listens on a free loopback port.
    pub fn start() -> Result<NullTarget> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| Error::step("cannot bind the null target", e))?;
        let addr = listener
            .local_addr()
            .map_err(Error::io("the null target's address"))?;
        listener
            .set_nonblocking(true)
            .map_err(Error::io("the null target's socket"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let map = Arc::new(Mutex::new(Map::default()));
        let me = NodeRef::from_addr(addr);
        let accept = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (stop, map) = (stop.clone(), map.clone());
                            std::thread::spawn(move || serve(stream, me, &map, &stop));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Ok(NullTarget {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for NullTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Serves one connection until it closes, sends garbage, or the target stops.
fn serve(mut stream: TcpStream, me: NodeRef, map: &Mutex<Map>, stop: &AtomicBool) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(READ_POLL));
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    while !stop.load(Ordering::SeqCst) {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        out.clear();
        loop {
            let request = match frame::decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            let reply = answer(request.message, me, map);
            if Frame::new(request.request_id, reply).encode(&mut out).is_err() {
                return;
            }
        }
        if !out.is_empty() && stream.write_all(&out).is_err() {
            return;
        }
    }
}

fn answer(request: Message, me: NodeRef, map: &Mutex<Map>) -> Message {
    match request {
        Message::Get { key } => {
            let (version, value) = lock(map).keys.get(&key).cloned().unwrap_or((0, None));
            Message::GetReply {
                hops: 0,
                version,
                value,
            }
        }
        Message::Put { key, value } => {
            let (version, _) = lock(map).write(key, Some(value));
            Message::PutReply { hops: 0, version }
        }
        Message::Delete { key } => {
            let (version, old) = lock(map).write(key, None);
            Message::DeleteReply {
                hops: 0,
                version,
                existed: old.is_some_and(|(_, v)| v.is_some()),
            }
        }
        Message::GetInfo => Message::Info(Box::new(NodeInfo {
            node: me,
            status: NodeStatus::Active,
            predecessor: Some(me),
            successors: vec![me],
            fingers: Vec::new(),
            keys: lock(map).keys.values().filter(|(_, v)| v.is_some()).count() as u64,
            keeps_down_members: false,
        })),
        other => Message::Error {
            code: ErrorCode::BadRequest,
            hops: 0,
            text: format!(
                "the null target answers GET, PUT, DELETE and GET_INFO, not {}",
                other.name()
            ),
        },
    }
}

fn lock(map: &Mutex<Map>) -> MutexGuard<'_, Map> {
    map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
