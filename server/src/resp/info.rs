//! INFO's text (redis.io/docs/latest/commands/info): `field:value` lines under `# Section`
//! headers, each section ended by an empty line, all `\r\n`:
//!
//! ```text
//!  # Server        redis_version, chordkv_version, os, process_id, tcp_port, uptime ...
//!  # Clients       connected_clients, blocked_clients:0, maxclients
//!  # Memory        used_memory (the process' resident set: the node's store, buffers and
//!                  code, where Redis counts its allocator's bytes), used_memory_rss, maxmemory:0
//!  # Stats         total_connections_received, total_commands_processed (RESP, this node),
//!                  expired_keys (the core's keys_expired: values this node's expiry removed)
//!                  (these four from the event loop's Facts, written when the command arrives)
//!  # Replication   role:master, connected_slaves:0 (each node is one master to a client)
//!  # Keyspace      db0:keys=<keys_primary>,expires=<those with an expiry ahead>,avg_ttl=<their
//!                  mean remaining life, ms> (the node's primary range, as DBSIZE's count)
//!  # chordkv       node_id, node_addr, status, predecessor, successor_list, routing_table,
//!                  routing_table_size, keys_stored, hops_mean, then every GET_STATS counter
//! ```
//!
//! Everything under the last three comes from the core's replies to GET_INFO and GET_STATS.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use chordkv_protocol::resp::Proto;
use chordkv_protocol::{NodeInfo, NodeRef, NodeStatus};

use super::REDIS_VERSION;

/// What the event loop knows for INFO and the core does not, shared by all sessions (the
/// loop is one thread: the counters are `Cell`s it updates as connections come and go).
pub(crate) struct Facts {
    pub resp_addr: SocketAddr,
    pub started: Instant,
    /// The users who may log in (`None`: no credentials configured).
    pub users: Option<std::sync::Arc<crate::auth::Users>>,
    /// The most RESP clients at once (`--max-clients`).
    pub max_clients: usize,
    /// The longest value a client may send (`--max-value-bytes`, lowered to what a Redis store
    /// takes): a longer bulk string is skipped and answered with an error.
    pub max_value_bytes: usize,
    /// A client's unprocessed input at most (`--client-query-buffer-limit`), in bytes.
    pub query_buffer_bytes: usize,
    /// Seconds after which an idle client is closed (`--idle-timeout-secs`; 0: never).
    pub idle_timeout_secs: u64,
    /// RESP connections accepted since the start.
    pub connections_received: Cell<u64>,
    /// RESP commands taken off the input since the start (errors and QUIT included, as
    /// Redis counts them).
    pub commands_processed: Cell<u64>,
    /// The wall clock in microseconds since the Unix epoch, as the loop read it just before
    /// the command (TIME): translation itself never reads a clock.
    pub unix_micros: Cell<u64>,
    /// Every RESP client connected, by id (its connection's token), as CLIENT LIST shows
    /// them: the loop adds and removes rows as connections come and go, a session updates its
    /// own row's name and protocol.
    pub client_rows: RefCell<BTreeMap<u64, ClientRow>>,
    /// Clients CLIENT KILL named (other than the caller): the loop closes them after the
    /// command.
    pub to_kill: RefCell<Vec<u64>>,
}

/// One RESP client as CLIENT LIST shows it.
#[derive(Clone, Debug)]
pub(crate) struct ClientRow {
    pub addr: SocketAddr,
    /// When it connected, in microseconds since the Unix epoch.
    pub since_micros: u64,
    pub name: Option<Bytes>,
    pub proto: Proto,
}

impl Facts {
    /// CLIENT LIST's line for client `id` (Redis' fields that mean something here; `age` in
    /// seconds), ended by `\n`; `None` when no such client is connected.
    pub fn client_line(&self, id: u64) -> Option<String> {
        let rows = self.client_rows.borrow();
        let row = rows.get(&id)?;
        let name = row
            .name
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let age = self.unix_micros.get().saturating_sub(row.since_micros) / 1_000_000;
        Some(format!(
            "id={id} addr={} laddr={} name={name} age={age} flags=N db=0 resp={}\n",
            row.addr,
            self.resp_addr,
            row.proto.version()
        ))
    }
}

impl Facts {
    pub fn new(
        resp_addr: SocketAddr,
        users: Option<std::sync::Arc<crate::auth::Users>>,
        max_clients: usize,
    ) -> Facts {
        Facts {
            resp_addr,
            started: Instant::now(),
            users,
            max_clients,
            max_value_bytes: chordkv_protocol::MAX_VALUE_BYTES,
            query_buffer_bytes: chordkv_core::options::DEFAULT_QUERY_BUFFER_BYTES as usize,
            idle_timeout_secs: 0,
            connections_received: Cell::new(0),
            commands_processed: Cell::new(0),
            unix_micros: Cell::new(0),
            client_rows: RefCell::new(BTreeMap::new()),
            to_kill: RefCell::new(Vec::new()),
        }
    }
}

/// A GET_STATS counter by name.
pub(crate) fn counter(counters: &[(String, u64)], name: &str) -> Option<u64> {
    counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// Whether INFO with `asked` includes `section` (Redis: no argument and `default` give the
/// usual sections, `all` and `everything` all of them).
pub(crate) fn wants_section(asked: &str, section: &str) -> bool {
    matches!(asked, "default" | "all" | "everything") || asked == section
}

/// The `# Server` section.
pub(crate) fn server_lines(facts: &Facts) -> String {
    let mut s = String::from("# Server\r\n");
    let _ = write!(
        s,
        "redis_version:{REDIS_VERSION}\r\nchordkv_version:{}\r\nredis_mode:standalone\r\n\
         os:{} {}\r\narch_bits:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\
         uptime_in_days:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH,
        usize::BITS,
        std::process::id(),
        facts.resp_addr.port(),
        facts.started.elapsed().as_secs(),
        facts.started.elapsed().as_secs() / 86_400,
    );
    s
}

/// The `# Clients`, `# Memory` and `# Stats` sections wanted by `asked`, in Redis' order
/// (redis-cli --stat reads connected_clients, blocked_clients, used_memory,
/// total_commands_processed and total_connections_received).
pub(crate) fn local_lines(facts: &Facts, asked: &str) -> String {
    let mut s = String::new();
    if wants_section(asked, "clients") {
        let _ = write!(
            s,
            "# Clients\r\nconnected_clients:{}\r\nblocked_clients:0\r\nmaxclients:{}\r\n\r\n",
            facts.client_rows.borrow().len(),
            facts.max_clients
        );
    }
    if wants_section(asked, "memory") {
        let rss = resident_bytes();
        let _ = write!(
            s,
            "# Memory\r\nused_memory:{rss}\r\nused_memory_human:{}\r\nused_memory_rss:{rss}\r\n\
             maxmemory:0\r\n\r\n",
            human_bytes(rss)
        );
    }
    if wants_section(asked, "stats") {
        let _ = write!(
            s,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
             expired_keys:0\r\nevicted_keys:0\r\n\r\n",
            facts.connections_received.get(),
            facts.commands_processed.get()
        );
    }
    s
}

/// The process' resident set in bytes (`/proc/self/statm`'s second field, in pages of 4 KiB);
/// 0 where there is no /proc.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Bytes as Redis' `used_memory_human` writes them: `1.50M`, `812.00K`, `42B`.
fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, f64); 4] = [("G", 1073741824.0), ("M", 1048576.0), ("K", 1024.0), ("B", 1.0)];
    for (unit, size) in UNITS {
        if n as f64 >= size && size > 1.0 {
            return format!("{:.2}{unit}", n as f64 / size);
        }
    }
    format!("{n}B")
}

/// INFO's text for `section`: `server` (the `# Server` section and the `# Clients`, `# Memory`
/// and `# Stats` sections, already written), then
/// `# Replication`, `# Keyspace` and `# chordkv` from the core's info and stats, as asked.
pub(crate) fn info_text(section: &str, server: &str, info: &NodeInfo, stats: &[(String, u64)]) -> String {
    // `server` holds the loop's sections, each ended by its empty line; `# Stats`' expired
    // keys are the core's (the values its expiry replaced with tombstones, this node).
    let expired = counter(stats, "keys_expired").unwrap_or(0);
    let mut s = server.replacen(
        "\r\nexpired_keys:0\r\n",
        &format!("\r\nexpired_keys:{expired}\r\n"),
        1,
    );
    if wants_section(section, "replication") {
        s.push_str("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n");
    }
    if wants_section(section, "keyspace") {
        let keys = counter(stats, "keys_primary").unwrap_or(info.keys);
        let expires = counter(stats, "keys_primary_expiring").unwrap_or(0);
        let avg_ttl = counter(stats, "keys_primary_ttl_remaining_ms").unwrap_or(0) / expires.max(1);
        let _ = write!(
            s,
            "# Keyspace\r\ndb0:keys={keys},expires={expires},avg_ttl={avg_ttl}\r\n\r\n"
        );
    }
    if wants_section(section, "chordkv") {
        let addrs = |nodes: &[NodeRef]| {
            nodes
                .iter()
                .map(|n| n.addr.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let status = match info.status {
            NodeStatus::Joining => "joining",
            NodeStatus::Active => "active",
            NodeStatus::Leaving => "leaving",
        };
        let _ = write!(
            s,
            "# chordkv\r\nnode_id:{}\r\nnode_addr:{}\r\nstatus:{status}\r\npredecessor:{}\r\n\
             successor_list:{}\r\nrouting_table:{}\r\nrouting_table_size:{}\r\nkeys_stored:{}\r\n",
            info.node.id,
            info.node.addr,
            info.predecessor
                .map_or_else(|| "-".to_string(), |p| p.addr.to_string()),
            addrs(&info.successors),
            addrs(&info.fingers),
            info.fingers.len(),
            info.keys,
        );
        let coordinated = counter(stats, "ops_coordinated").unwrap_or(0);
        let hops = counter(stats, "hops_total").unwrap_or(0);
        if coordinated > 0 {
            let _ = write!(s, "hops_mean:{:.3}\r\n", hops as f64 / coordinated as f64);
        }
        for (name, value) in stats {
            let _ = write!(s, "{name}:{value}\r\n");
        }
    }
    s
}
