//! The options of one node, declared once.
//!
//! `chordkv node` and `chordkv cluster` flatten [`NodeOptions`] into their command lines
//! (clap), loadgen's `cluster:` section reads the same fields from YAML (serde), the local
//! cluster launcher turns them back into `chordkv node` arguments ([`NodeOptions::to_args`]),
//! and [`NodeOptions::chord_config`] is the one place they are checked together. A value one
//! front end accepts, every front end accepts; one it refuses, every one refuses with the
//! same words.

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::chord::config::{
    AckPolicy, PartitionPolicy, ReadFrom, DEFAULT_MAX_CLOCK_OFFSET_MS, DEFAULT_REPLICAS,
    DEFAULT_STABILIZE_INTERVAL_MS, DEFAULT_SUCCESSORS, DEFAULT_TOMBSTONE_GRACE_MS,
};
use crate::chord::{Config, Routing};
use crate::{Error, Result};

fn invalid(message: String) -> Error {
    Error::InvalidOptions(message)
}

/// Where a node keeps its keys unless told otherwise.
pub const DEFAULT_STORE: &str = "memory";
/// Store worker threads unless told otherwise.
pub const DEFAULT_STORE_THREADS: u64 = 4;
/// Virtual nodes per process unless told otherwise (see `--vnodes`): 8 balanced positions
/// keep every process of a ring of 8 within a few percent of an equal share of the keys
/// (results/balance/cluster.md), for about 0.02 cores of maintenance per idle process
/// (results/balance/vnode-cost.md).
pub const DEFAULT_VNODES: u64 = 8;
/// The most virtual nodes one process runs.
pub const MAX_VNODES: u64 = 256;

/// A node's tunables: the ring, replication, partitions, routing and its store. Field names
/// are the YAML keys; `--kebab-case` of them are the flags.
#[derive(Args, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeOptions {
    /// Length of the successor list: the ring survives R - 1 adjacent failures.
    #[arg(
        long,
        value_name = "R",
        default_value_t = DEFAULT_SUCCESSORS as u64,
        value_parser = clap::value_parser!(u64).range(1..=1024)
    )]
    pub successors: u64,
    /// Period of stabilize, in milliseconds; the other maintenance periods and peer timeouts
    /// scale with it.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = DEFAULT_STABILIZE_INTERVAL_MS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub stabilize_ms: u64,
    /// Virtual nodes: ring positions this process runs, each with its own successor list,
    /// fingers and range, sharing the process's store, sockets and event loop (Chord
    /// section 6.9). More positions even out the share of the ring each process owns; each
    /// costs its own maintenance traffic. A key's replicas go to distinct processes.
    #[arg(
        long,
        value_name = "V",
        default_value_t = DEFAULT_VNODES,
        value_parser = clap::value_parser!(u64).range(1..=MAX_VNODES)
    )]
    pub vnodes: u64,
    /// Where the node keeps its keys: `memory`, or `redis://[[USER]:PASSWORD@]HOST:PORT/DB`.
    /// In Redis the node's keys are namespaced by its advertised address, so nodes may share
    /// one Redis. The node exits 1 at startup if Redis cannot be reached, or if it could lose
    /// data without notice: it evicts keys (`maxmemory-policy allkeys-*`; use `noeviction`)
    /// keeps them only in RDB snapshots (`save` without `appendonly yes`: run it with
    /// `--save '' --appendonly no` and no old dump.rdb, or `--appendonly yes --appendfsync
    /// always`), or is a replica.
    #[arg(long, value_name = "URL", default_value = DEFAULT_STORE)]
    pub store: String,
    /// Worker threads that run the store's long operations (scans, digests, transfers), for a
    /// store whose calls block (Redis); its gets and puts go to Redis in pipelines from one
    /// more thread. The memory store ignores them.
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_STORE_THREADS,
        value_parser = clap::value_parser!(u64).range(1..=1024)
    )]
    pub store_threads: u64,
    /// Replicas after the primary: every key is kept on its primary (the key's successor on
    /// the ring) and the next N nodes. 0 keeps one copy.
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_REPLICAS as u64,
        value_parser = clap::value_parser!(u64).range(0..=16)
    )]
    pub replicas: u64,
    /// When a write is acknowledged: `all` once the primary and every live replica have
    /// applied it, `one` once the primary has (replicas updated in the background).
    #[arg(long, value_name = "POLICY", default_value_t = AckPolicy::All)]
    pub ack: AckPolicy,
    /// Which copies serve reads: `primary` (under its lease: every read sees every
    /// acknowledged write) or `replicas` (any live holder of a copy, chosen at random: reads
    /// of a hot key spread over replicas + 1 hosts; a replica that missed a write may answer
    /// with an older version).
    #[arg(long, value_name = "FROM", default_value_t = ReadFrom::Primary)]
    pub read_from: ReadFrom,
    /// What the node serves when it cannot reach enough of a key's preference list:
    /// `consistent` serves a key only while a majority of its primary and replicas (members
    /// that are down but not gone count) can be reached, so a partitioned minority stops
    /// acknowledging writes and refuses reads it cannot vouch for; `available` keeps serving
    /// on whatever nodes are live (Dynamo's sloppy quorum) and merges by version after the
    /// partition heals, at the cost of lost writes and stale reads.
    #[arg(long, value_name = "POLICY", default_value_t = PartitionPolicy::Consistent)]
    pub partition_policy: PartitionPolicy,
    /// The most any two nodes' clocks may differ, in milliseconds. A version further ahead of
    /// this node's clock is refused (a wrong clock or a forged frame cannot pin a key), and
    /// request deadlines and leases leave this margin.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_MAX_CLOCK_OFFSET_MS)]
    pub max_clock_offset_ms: u64,
    /// How old a tombstone (a deleted key's marker) must be before it may be collected, in
    /// milliseconds; collection also waits for every holder of the key's range to have it.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_TOMBSTONE_GRACE_MS)]
    pub tombstone_grace_ms: u64,
    /// How lookups are routed: `classic` (Chord's fingers, about 1/2 log2 N hops), `base:B`
    /// (B - 1 fingers per level, about log_B N hops) or `onehop` (a full membership table
    /// kept by disseminating joins and leaves: one hop).
    #[arg(long, value_name = "SCHEME", default_value_t = Routing::Classic)]
    pub routing: Routing,
    /// Entries of the location cache: owner ranges learnt from lookups, tried before
    /// routing (0: no cache).
    #[arg(long, value_name = "ENTRIES", default_value_t = 0)]
    pub cache: usize,
    /// The ring's keyring: a file of base64 32-byte keys, one per line (`chordkv keygen`
    /// prints one). With it, every connection between nodes is authenticated and encrypted,
    /// and a process without a key of the ring cannot join, route, replicate, hand off or
    /// repair; clients still connect without it. The first key opens connections, every key
    /// is accepted; SIGHUP reads the file again (rotation). Without it, anyone who reaches the
    /// port may act as a peer.
    #[arg(long, value_name = "FILE")]
    pub keyring: Option<String>,
    /// With --keyring: refuse peer operations from connections without a key. Turn off only
    /// while rolling a keyring out to a ring that ran without one (then on, everywhere).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub keyring_verify_incoming: bool,
    /// With --keyring: open connections to peers with the key. Turn off only while rolling a
    /// keyring out (first step: every node holds the keyring, sends without it).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub keyring_verify_outgoing: bool,
    /// Client connections at once (Redis' `maxclients`); one more is answered `max number of
    /// clients reached` and closed. Peers are not counted. Lowered at start to what the
    /// open-file limit allows (the node says so).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CLIENTS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_clients: u64,
    /// Bytes of unprocessed input one client may have buffered (Redis'
    /// `client-query-buffer-limit`): an unfinished command or input read ahead; beyond it the
    /// client is closed.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_QUERY_BUFFER_BYTES, value_parser = clap::value_parser!(u64).range(1024..))]
    pub client_query_buffer_limit: u64,
    /// Longest value a client may store, in bytes (Redis' `proto-max-bulk-len`, the same
    /// 512 MiB default and ceiling). A longer one is answered with an error and the connection
    /// is kept; APPEND, SETRANGE and SETBIT cannot grow a value past it.
    /// --client-query-buffer-limit must hold a SET of the longest value: this plus 65 KiB
    /// (the longest key and the command around it). With a Redis store it is lowered, if need be, to what that
    /// server's own `proto-max-bulk-len` lets the driver write.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_VALUE_BYTES, value_parser = clap::value_parser!(u64).range(1..=chordkv_protocol::MAX_VALUE_BYTES as u64))]
    pub max_value_bytes: u64,
    /// Close a client idle (no input, nothing in flight) this many seconds (Redis' `timeout`);
    /// 0 never closes one.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub idle_timeout_secs: u64,
    /// The password of the `default` user (Redis' `requirepass`): clients must AUTH (RESP)
    /// or log in (the binary protocol, `chordkv --password`) before anything else. Needs
    /// --keyring.
    #[arg(long, value_name = "PASSWORD")]
    pub requirepass: Option<String>,
    /// A users file: `user NAME on #SHA256|>PASSWORD +@read +@write +@admin` lines (a subset of
    /// Redis' ACL file; see docs/architecture.md). Needs --keyring.
    #[arg(long, value_name = "FILE")]
    pub users: Option<String>,
    /// Without --requirepass or --users, refuse clients from other hosts when the node listens
    /// on an address they can reach (Redis' protected mode): `yes` or `no`.
    #[arg(long, value_name = "yes|no", default_value = "yes", value_parser = parse_yes_no)]
    pub protected_mode: YesNo,
    /// TLS for clients: the node's certificate chain (PEM). With it the RESP port speaks only
    /// TLS and the binary port serves clients only over TLS (`chordkv --tls`); peers keep using
    /// the keyring. Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<String>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<String>,
    /// With --tls-cert: clients must present a certificate signed by this CA (PEM), as Redis'
    /// `tls-auth-clients yes`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_ca: Option<String>,
}

/// `yes` or `no`, as Redis' configuration spells booleans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum YesNo {
    Yes,
    No,
}

impl YesNo {
    pub fn is_yes(self) -> bool {
        self == YesNo::Yes
    }
}

impl std::fmt::Display for YesNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_yes() { "yes" } else { "no" })
    }
}

fn parse_yes_no(s: &str) -> Result<YesNo, String> {
    match s {
        "yes" => Ok(YesNo::Yes),
        "no" => Ok(YesNo::No),
        other => Err(format!("expected yes or no, not '{other}'")),
    }
}

/// Client connections at once unless told otherwise (Redis' `maxclients` default).
pub const DEFAULT_MAX_CLIENTS: u64 = 10_000;
/// A client's unprocessed input unless told otherwise, in bytes: Redis' default, 1 GiB (the
/// largest value twice over).
pub const DEFAULT_QUERY_BUFFER_BYTES: u64 = 1024 * 1024 * 1024;
/// The longest value a client may store unless told otherwise: Redis' `proto-max-bulk-len`
/// default, 512 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: u64 = chordkv_protocol::MAX_VALUE_BYTES as u64;

impl Default for NodeOptions {
    /// The defaults `chordkv node` runs with.
    fn default() -> NodeOptions {
        NodeOptions {
            successors: DEFAULT_SUCCESSORS as u64,
            stabilize_ms: DEFAULT_STABILIZE_INTERVAL_MS,
            vnodes: DEFAULT_VNODES,
            store: DEFAULT_STORE.to_string(),
            store_threads: DEFAULT_STORE_THREADS,
            replicas: DEFAULT_REPLICAS as u64,
            ack: AckPolicy::All,
            read_from: ReadFrom::Primary,
            partition_policy: PartitionPolicy::Consistent,
            max_clock_offset_ms: DEFAULT_MAX_CLOCK_OFFSET_MS,
            tombstone_grace_ms: DEFAULT_TOMBSTONE_GRACE_MS,
            routing: Routing::Classic,
            cache: 0,
            keyring: None,
            keyring_verify_incoming: true,
            keyring_verify_outgoing: true,
            max_clients: DEFAULT_MAX_CLIENTS,
            client_query_buffer_limit: DEFAULT_QUERY_BUFFER_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            idle_timeout_secs: 0,
            requirepass: None,
            users: None,
            protected_mode: YesNo::Yes,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
        }
    }
}

impl NodeOptions {
    /// The core's configuration, or why these options cannot run together (the text names the
    /// flags to change).
    pub fn chord_config(&self) -> Result<Config> {
        // The ranges clap enforces on the command line, for values that came from YAML.
        if self.successors == 0 || self.successors > 1024 {
            return Err(invalid(format!(
                "--successors {}: must be 1 to 1024",
                self.successors
            )));
        }
        if self.stabilize_ms == 0 {
            return Err(invalid("--stabilize-ms 0: must be at least 1".to_string()));
        }
        if self.vnodes == 0 || self.vnodes > MAX_VNODES {
            return Err(invalid(format!(
                "--vnodes {}: must be 1 to {MAX_VNODES}",
                self.vnodes
            )));
        }
        if self.store_threads == 0 || self.store_threads > 1024 {
            return Err(invalid(format!(
                "--store-threads {}: must be 1 to 1024",
                self.store_threads
            )));
        }
        if (self.requirepass.is_some() || self.users.is_some()) && self.keyring.is_none() {
            return Err(invalid(
                "--requirepass and --users need --keyring: peers and clients share the node's port, \
                 and only the ring's key tells a peer from a client that has not logged in \
                 (make one with `chordkv keygen > FILE`)"
                    .to_string(),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some()
            || self.tls_ca.is_some() && self.tls_cert.is_none()
        {
            return Err(invalid(
                "--tls-cert and --tls-key go together (and --tls-ca needs them)".to_string(),
            ));
        }
        if self.max_clients == 0 {
            return Err(invalid("--max-clients 0: must be at least 1".to_string()));
        }
        if self.client_query_buffer_limit < 1024 {
            return Err(invalid(format!(
                "--client-query-buffer-limit {}: must be at least 1024 bytes",
                self.client_query_buffer_limit
            )));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > DEFAULT_MAX_VALUE_BYTES {
            return Err(invalid(format!(
                "--max-value-bytes {}: must be 1 to {DEFAULT_MAX_VALUE_BYTES}",
                self.max_value_bytes
            )));
        }
        // A SET of the longest value is its bytes plus the command around them (the key is
        // at most 64 KiB): it must fit in the client's buffer to arrive.
        let largest_set = self.max_value_bytes + chordkv_protocol::MAX_KEY_BYTES as u64 + 1024;
        if self.client_query_buffer_limit < largest_set {
            return Err(invalid(format!(
                "--client-query-buffer-limit {} is too small for --max-value-bytes {}: a SET of \
                 the longest value needs {largest_set} bytes; raise the first or lower the second",
                self.client_query_buffer_limit, self.max_value_bytes
            )));
        }
        if self.replicas > 16 {
            return Err(invalid(format!("--replicas {}: must be 0 to 16", self.replicas)));
        }
        if self.replicas >= self.successors {
            return Err(invalid(format!(
                "--replicas {} needs a longer successor list: give --successors {} or more",
                self.replicas,
                self.replicas + 1
            )));
        }
        let mut chord = Config::with_stabilize_interval_ms(self.stabilize_ms);
        chord.successors = self.successors as usize;
        chord.replicas = self.replicas as usize;
        chord.ack = self.ack;
        chord.read_from = self.read_from;
        chord.partition_policy = self.partition_policy;
        chord.max_clock_offset_ms = self.max_clock_offset_ms;
        chord.tombstone_grace_ms = self.tombstone_grace_ms;
        chord.routing = self.routing;
        chord.cache_entries = self.cache;
        chord.max_value_bytes = self.max_value_bytes as usize;
        Ok(chord)
    }

    /// These options as `chordkv node` arguments: the store always, every other option whose
    /// value is not the node's default (a node started with them runs exactly these values).
    pub fn to_args(&self) -> Vec<String> {
        let d = NodeOptions::default();
        let pairs = [
            (
                "--successors",
                self.successors != d.successors,
                self.successors.to_string(),
            ),
            (
                "--stabilize-ms",
                self.stabilize_ms != d.stabilize_ms,
                self.stabilize_ms.to_string(),
            ),
            ("--vnodes", self.vnodes != d.vnodes, self.vnodes.to_string()),
            ("--store", true, self.store.clone()),
            (
                "--store-threads",
                self.store_threads != d.store_threads,
                self.store_threads.to_string(),
            ),
            (
                "--replicas",
                self.replicas != d.replicas,
                self.replicas.to_string(),
            ),
            ("--ack", self.ack != d.ack, self.ack.to_string()),
            (
                "--read-from",
                self.read_from != d.read_from,
                self.read_from.to_string(),
            ),
            ("--routing", self.routing != d.routing, self.routing.to_string()),
            ("--cache", self.cache != d.cache, self.cache.to_string()),
            (
                "--partition-policy",
                self.partition_policy != d.partition_policy,
                self.partition_policy.to_string(),
            ),
            (
                "--max-clock-offset-ms",
                self.max_clock_offset_ms != d.max_clock_offset_ms,
                self.max_clock_offset_ms.to_string(),
            ),
            (
                "--tombstone-grace-ms",
                self.tombstone_grace_ms != d.tombstone_grace_ms,
                self.tombstone_grace_ms.to_string(),
            ),
            (
                "--keyring",
                self.keyring.is_some(),
                self.keyring.clone().unwrap_or_default(),
            ),
            (
                "--keyring-verify-incoming",
                self.keyring_verify_incoming != d.keyring_verify_incoming,
                self.keyring_verify_incoming.to_string(),
            ),
            (
                "--keyring-verify-outgoing",
                self.keyring_verify_outgoing != d.keyring_verify_outgoing,
                self.keyring_verify_outgoing.to_string(),
            ),
            (
                "--max-clients",
                self.max_clients != d.max_clients,
                self.max_clients.to_string(),
            ),
            (
                "--client-query-buffer-limit",
                self.client_query_buffer_limit != d.client_query_buffer_limit,
                self.client_query_buffer_limit.to_string(),
            ),
            (
                "--max-value-bytes",
                self.max_value_bytes != d.max_value_bytes,
                self.max_value_bytes.to_string(),
            ),
            (
                "--idle-timeout-secs",
                self.idle_timeout_secs != d.idle_timeout_secs,
                self.idle_timeout_secs.to_string(),
            ),
            (
                "--requirepass",
                self.requirepass.is_some(),
                self.requirepass.clone().unwrap_or_default(),
            ),
            (
                "--users",
                self.users.is_some(),
                self.users.clone().unwrap_or_default(),
            ),
            (
                "--protected-mode",
                self.protected_mode != d.protected_mode,
                self.protected_mode.to_string(),
            ),
            (
                "--tls-cert",
                self.tls_cert.is_some(),
                self.tls_cert.clone().unwrap_or_default(),
            ),
            (
                "--tls-key",
                self.tls_key.is_some(),
                self.tls_key.clone().unwrap_or_default(),
            ),
            (
                "--tls-ca",
                self.tls_ca.is_some(),
                self.tls_ca.clone().unwrap_or_default(),
            ),
        ];
        pairs
            .into_iter()
            .filter(|(_, given, _)| *given)
            .flat_map(|(flag, _, value)| [flag.to_string(), value])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: NodeOptions,
    }

    #[test]
    fn the_command_line_defaults_are_the_yaml_defaults() {
        let cli = Cli::try_parse_from(["node"]).expect("no flags");
        assert_eq!(cli.options, NodeOptions::default());
        let yaml: NodeOptions = serde_json::from_str("{}").expect("no keys");
        assert_eq!(yaml, NodeOptions::default());
    }

    #[test]
    fn to_args_parses_back_to_the_same_options() {
        let options = NodeOptions {
            replicas: 1,
            ack: AckPolicy::One,
            partition_policy: PartitionPolicy::Available,
            routing: Routing::Base(4),
            cache: 64,
            store: "redis://127.0.0.1:6379/0".into(),
            keyring: Some("/etc/chordkv/keyring".into()),
            keyring_verify_outgoing: false,
            max_clients: 50,
            idle_timeout_secs: 300,
            max_value_bytes: 1 << 20,
            users: Some("/etc/chordkv/users".into()),
            requirepass: Some("pw".into()),
            protected_mode: YesNo::No,
            ..NodeOptions::default()
        };
        let mut argv = vec!["node".to_string()];
        argv.extend(options.to_args());
        let back = Cli::try_parse_from(argv).expect("its own arguments parse");
        assert_eq!(back.options, options);
        assert!(options.chord_config().is_ok());
    }

    #[test]
    fn every_front_end_refuses_the_same_values() {
        // A routing scheme the node refuses is refused when read from YAML too.
        let err = serde_json::from_str::<NodeOptions>(r#"{"routing": "base:1000"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown routing 'base:1000'"), "{err}");
        assert!(Cli::try_parse_from(["node", "--routing", "base:1000"]).is_err());
        let err = serde_json::from_str::<NodeOptions>(r#"{"replica": 1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `replica`"), "{err}");
        let o = NodeOptions {
            replicas: 8,
            ..NodeOptions::default()
        };
        let e = o.chord_config().unwrap_err();
        assert!(e.to_string().contains("--successors 9"), "{e}");
        // A value limit over the protocol's, or one the query buffer could not take in.
        assert!(Cli::try_parse_from(["node", "--max-value-bytes", "536870913"]).is_err());
        let yaml: NodeOptions = serde_json::from_str(r#"{"max_value_bytes": 536870913}"#).unwrap();
        let e = yaml.chord_config().unwrap_err();
        assert!(e.to_string().contains("--max-value-bytes 536870913"), "{e}");
        let o = NodeOptions {
            client_query_buffer_limit: 2 << 20,
            ..NodeOptions::default()
        };
        let e = o.chord_config().unwrap_err();
        assert!(e.to_string().contains("lower the second"), "{e}");
        let o = NodeOptions {
            client_query_buffer_limit: 2 << 20,
            max_value_bytes: 1 << 20,
            ..NodeOptions::default()
        };
        assert_eq!(o.chord_config().unwrap().max_value_bytes, 1 << 20);
    }
}
