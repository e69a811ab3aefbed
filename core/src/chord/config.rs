//! Tunables of the Chord core, each with its unit in its name.

/// Default length of the successor list (Chord's `r`).
pub const DEFAULT_SUCCESSORS: usize = 8;
/// Default period of `stabilize` and `check_predecessor`.
pub const DEFAULT_STABILIZE_INTERVAL_MS: u64 = 250;
/// Default number of replicas after the primary (every key is on `1 + replicas` nodes).
pub const DEFAULT_REPLICAS: usize = 2;
/// Sub-ranges an anti-entropy round compares per exchange.
pub const ANTI_ENTROPY_PARTS: u32 = 64;

/// When a write is acknowledged to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckPolicy {
    /// After the primary and every live replica have applied it.
    All,
    /// After the primary has applied it; replicas are updated in the background.
    One,
}

impl AckPolicy {
    /// The name on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            AckPolicy::All => "all",
            AckPolicy::One => "one",
        }
    }
}

impl std::fmt::Display for AckPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Serde for a type written as its `Display` text and read with its `FromStr` (the flag's
/// syntax, so a YAML file and a command line accept the same values). The text is parsed
/// inside the deserializer's own call, so an error points at the value in the file.
macro_rules! serde_as_text {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Text;
                impl serde::de::Visitor<'_> for Text {
                    type Value = $t;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a string")
                    }
                    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<$t, E> {
                        text.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(Text)
            }
        }
    )*};
}

serde_as_text!(AckPolicy, PartitionPolicy, Routing, ReadFrom);

/// Which copies serve reads (`--read-from`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// The key's primary, under its lease (`consistent`): a read sees every acknowledged write.
    Primary,
    /// Any live holder of a copy (the primary or a replica of the key's preference list),
    /// chosen at random by the node that coordinates the read, or the coordinator itself when
    /// it holds a copy: reads of one hot key spread over `replicas + 1` hosts. A replica that
    /// missed a write (it was down or cut off, and anti-entropy has not repaired it yet) may
    /// answer with an older version: a stale read (Dynamo's R = 1).
    Replicas,
}

impl ReadFrom {
    /// The name on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            ReadFrom::Primary => "primary",
            ReadFrom::Replicas => "replicas",
        }
    }
}

impl std::fmt::Display for ReadFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ReadFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "primary" => Ok(ReadFrom::Primary),
            "replicas" => Ok(ReadFrom::Replicas),
            other => Err(format!(
                "unknown variant `{other}`, expected `primary` or `replicas`"
            )),
        }
    }
}

impl std::str::FromStr for AckPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(AckPolicy::All),
            "one" => Ok(AckPolicy::One),
            other => Err(format!("unknown variant `{other}`, expected `all` or `one`")),
        }
    }
}

/// What a node does when it cannot reach enough of a key's preference list (`--partition-policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionPolicy {
    /// Serve a key only while a majority of its preference list (counting members that are
    /// down but not gone) can be reached: a minority stops acknowledging writes and refuses
    /// reads it cannot vouch for (Redis Cluster's minority masters, a quorum system).
    Consistent,
    /// Always writable (Dynamo's sloppy quorum): the live nodes serve every key they can,
    /// and divergent copies are merged by version after the partition heals (last write wins).
    Available,
}

impl std::str::FromStr for PartitionPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "consistent" => Ok(PartitionPolicy::Consistent),
            "available" => Ok(PartitionPolicy::Available),
            other => Err(format!(
                "unknown variant `{other}`, expected `consistent` or `available`"
            )),
        }
    }
}

impl PartitionPolicy {
    /// The name on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            PartitionPolicy::Consistent => "consistent",
            PartitionPolicy::Available => "available",
        }
    }
}

impl std::fmt::Display for PartitionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Default bound on the offset between any two nodes' clocks (`--max-clock-offset-ms`), as
/// CockroachDB's `--max-offset`.
pub const DEFAULT_MAX_CLOCK_OFFSET_MS: u64 = 500;
/// Default age before a tombstone may be collected (`--tombstone-grace-ms`).
pub const DEFAULT_TOMBSTONE_GRACE_MS: u64 = 60_000;

/// How a node routes lookups (`--routing`). See `routing.rs` and `membership.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// Chord's fingers: finger `i` = successor(n + 2^i); about 1/2 log2 N hops.
    Classic,
    /// Finger expansion (DKS): `B - 1` fingers per level at n + j * floor(2^160 / B^i),
    /// `j = 1..B-1` (`routing::finger_offsets`); about log_B N hops for about (B-1) log_B N
    /// fingers. `Base(2)` is classic.
    Base(u32),
    /// A full membership table kept by disseminating join and leave events (Gupta, Liskov,
    /// Rodrigues): one hop per lookup.
    OneHop,
}

impl std::str::FromStr for Routing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "classic" => Ok(Routing::Classic),
            "onehop" => Ok(Routing::OneHop),
            _ => {
                let err = || {
                    format!(
                        "unknown routing '{s}' (expected 'classic', 'base:B' with B in 2..={}, or 'onehop')",
                        super::routing::MAX_BASE
                    )
                };
                let b: u32 = s
                    .strip_prefix("base:")
                    .ok_or_else(err)?
                    .parse()
                    .map_err(|_| err())?;
                match b {
                    2 => Ok(Routing::Classic),
                    3..=super::routing::MAX_BASE => Ok(Routing::Base(b)),
                    _ => Err(err()),
                }
            }
        }
    }
}

impl std::fmt::Display for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Routing::Classic => write!(f, "classic"),
            Routing::Base(b) => write!(f, "base:{b}"),
            Routing::OneHop => write!(f, "onehop"),
        }
    }
}

/// Configuration of one node's state machine. Times are in milliseconds of the driver's clock.
#[derive(Clone, Debug)]
pub struct Config {
    /// How lookups are routed (`--routing`).
    pub routing: Routing,
    /// Entries of the location cache (`--cache`): owner ranges learned from lookups, tried
    /// before routing. 0 turns the cache off.
    pub cache_entries: usize,
    /// Length `r` of the successor list: the ring survives `r - 1` adjacent failures.
    pub successors: usize,
    /// Replicas after the primary: a key lives on its primary and the next `replicas` nodes.
    pub replicas: usize,
    /// When a write is acknowledged.
    pub ack: AckPolicy,
    /// Which copies serve reads.
    pub read_from: ReadFrom,
    /// What the node serves when it cannot reach enough of a key's preference list.
    pub partition_policy: PartitionPolicy,
    /// The most any two nodes' clocks may differ (`--max-clock-offset-ms`). A version more than
    /// this ahead of the receiver's clock is refused, and the request deadlines and leases
    /// that keep a late write from winning leave this much margin.
    pub max_clock_offset_ms: u64,
    /// Period of anti-entropy rounds (a primary compares its range with each replica). A
    /// change of successors or predecessor brings the next round forward to the next
    /// stabilize round, which is how lost copies are re-replicated.
    pub anti_entropy_interval_ms: u64,
    /// How old a tombstone must be (by its version's clock) before a round in which every
    /// replica agreed may remove it.
    pub tombstone_grace_ms: u64,
    /// Period of `stabilize` (ask the successor for its predecessor, then `notify` it).
    pub stabilize_interval_ms: u64,
    /// Period of `fix_fingers`; each round refreshes fingers until one needs a remote lookup.
    pub fix_fingers_interval_ms: u64,
    /// Period of `check_predecessor` (ping the predecessor, forget it when it does not answer).
    pub check_predecessor_interval_ms: u64,
    /// How long a request to a peer may go unanswered before the peer is presumed dead.
    pub rpc_timeout_ms: u64,
    /// How long a client operation may take end to end before it fails with `Timeout`.
    pub request_timeout_ms: u64,
    /// How long a node waits for the next batch of an incoming key transfer before it gives
    /// up on it and serves the range with what it has.
    pub transfer_stall_timeout_ms: u64,
    /// Most items in one transfer batch.
    pub transfer_batch_items: usize,
    /// Most key and value bytes in one transfer batch (one item always fits, whatever its size);
    /// at most [`chordkv_protocol::limits::MAX_BATCH_BYTES`], so that a batch fits one frame.
    pub transfer_batch_bytes: usize,
    /// Most client requests held while a key range is being received.
    pub max_held_requests: usize,
    /// Longest value a client may store through this node (`--max-value-bytes`, Redis'
    /// `proto-max-bulk-len`), in bytes, at most [`chordkv_protocol::MAX_VALUE_BYTES`]: a longer
    /// PUT is refused with `TooLarge`, and a command that would grow a value past it (APPEND,
    /// SETRANGE, SETBIT) answers Redis' `string exceeds maximum allowed size`. Values that
    /// arrive from peers (replication, transfer, repair) are taken whatever their size.
    pub max_value_bytes: usize,
    /// A request that needs more overlay hops than this fails (a routing loop guard).
    pub max_hops: u16,
    /// How long a peer that failed to answer stays excluded from routing choices.
    pub dead_peer_ttl_ms: u64,
    /// How long a graceful leave may take before the node leaves anyway.
    pub leave_timeout_ms: u64,
    /// Seed of the node's RNG (timer jitter): the same seed and inputs give the same run.
    pub seed: u64,
    /// Tells this start of the node from its earlier ones on the same address (the server uses
    /// its start time): a successor that sees a new incarnation of its predecessor hands the
    /// range over again instead of taking the restarted node for the one it knew.
    pub incarnation: u64,
    /// Whether the store opened holding this node's data from an earlier run (a Redis store
    /// with the marker of an earlier open). When false and the ring still lists this node as a
    /// member (`consistent`: it restarted), the writes it acknowledged before are gone, so its
    /// copies count as untrusted until refilled (`trust.rs`). A node joining for the first
    /// time, or creating a ring, acknowledged nothing and is trusted either way.
    pub store_kept_copies: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config::with_stabilize_interval_ms(DEFAULT_STABILIZE_INTERVAL_MS)
    }
}

impl Config {
    /// The defaults, with every maintenance period and timeout scaled from `stabilize_ms`.
    pub fn with_stabilize_interval_ms(stabilize_ms: u64) -> Config {
        let stabilize_ms = stabilize_ms.max(1);
        Config {
            routing: Routing::Classic,
            cache_entries: 0,
            successors: DEFAULT_SUCCESSORS,
            replicas: DEFAULT_REPLICAS,
            ack: AckPolicy::All,
            read_from: ReadFrom::Primary,
            partition_policy: PartitionPolicy::Consistent,
            max_clock_offset_ms: DEFAULT_MAX_CLOCK_OFFSET_MS,
            anti_entropy_interval_ms: stabilize_ms * 20,
            tombstone_grace_ms: DEFAULT_TOMBSTONE_GRACE_MS,
            stabilize_interval_ms: stabilize_ms,
            fix_fingers_interval_ms: (stabilize_ms / 2).max(1),
            check_predecessor_interval_ms: stabilize_ms,
            rpc_timeout_ms: (stabilize_ms * 4).clamp(200, 2_000),
            request_timeout_ms: 10_000,
            transfer_stall_timeout_ms: 10_000,
            transfer_batch_items: 1_024,
            transfer_batch_bytes: 4 << 20,
            max_held_requests: 50_000,
            max_value_bytes: chordkv_protocol::MAX_VALUE_BYTES,
            max_hops: 32,
            dead_peer_ttl_ms: stabilize_ms * 8,
            leave_timeout_ms: 30_000,
            seed: 0,
            incarnation: 0,
            store_kept_copies: false,
        }
    }

    /// Whether the partition policy is `consistent` (quorums and leases).
    pub fn is_consistent(&self) -> bool {
        self.partition_policy == PartitionPolicy::Consistent
    }

    /// How long a departed neighbour (`available`) is probed, and holds back the collection of
    /// tombstones of our range if it kept copies of it: ten tombstone graces. An operator who
    /// knows it is gone for good says so sooner with `chordkv forget`.
    pub fn departed_ttl_ms(&self) -> u64 {
        self.tombstone_grace_ms.saturating_mul(10)
    }

    /// How long a lease's promise lasts (`consistent`): one RPC timeout (the failure detection
    /// bound) plus the clock offset bound, so a holder can stamp writes for at least one RPC
    /// timeout after asking and a stand-in takes over soon after the holder goes silent.
    pub fn lease_ms(&self) -> u64 {
        self.rpc_timeout_ms + self.max_clock_offset_ms
    }

    /// How long an entry waits for the owner to answer a write before it retries or fails over:
    /// one RPC timeout plus twice the clock offset bound. The owner refuses a write once its
    /// own clock is within `max_clock_offset_ms` of the deadline the entry gave it, and its
    /// clock may run up to `max_clock_offset_ms` ahead of the entry's: with one offset only, an
    /// owner ahead by more than an RPC timeout refused every write it was sent (a scenario with
    /// clocks 406 ms apart and `--stabilize-ms 100`, `clock_skew_within_bound`).
    pub fn write_hop_timeout_ms(&self) -> u64 {
        self.rpc_timeout_ms + 2 * self.max_clock_offset_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_parses_and_prints() {
        for (text, want) in [
            ("classic", Routing::Classic),
            ("base:2", Routing::Classic),
            ("base:4", Routing::Base(4)),
            ("base:256", Routing::Base(256)),
            ("onehop", Routing::OneHop),
        ] {
            assert_eq!(text.parse::<Routing>(), Ok(want));
        }
        for bad in [
            "", "base:", "base:1", "base:0", "base:257", "base:x", "one-hop", "Classic",
        ] {
            assert!(bad.parse::<Routing>().is_err(), "{bad}");
        }
        assert_eq!(Routing::Base(16).to_string(), "base:16");
        assert_eq!("onehop".parse::<Routing>().unwrap().to_string(), "onehop");
    }
}
