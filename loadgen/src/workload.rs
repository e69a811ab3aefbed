//! Workload files: what a run does, read from YAML.
//!
//! Every field has a default except `name`; unknown fields are rejected, and a file that does
//! not parse is reported with its line and column ([`WorkloadError`]). Units are in the field
//! names (`duration_s`, `rate_per_s`, `key_bytes`).
//!
//! ```yaml
//! name: zipfian
//! duration_s: 10
//! connections: 8
//! threads: 8
//! keys: 10000
//! value_bytes: { min: 64, max: 256 }   # or a fixed size: `value_bytes: 100`
//! mix: { get: 0.9, put: 0.1 }
//! distribution: { zipfian: { theta: 0.99 } }   # or `distribution: uniform`
//! cluster: { nodes: 8, replicas: 2 }        # any `chordkv node` option: NodeOptions
//! faults:                                      # see [`Fault`]; local cluster only
//!   - { at_s: 5, action: kill, count: 2 }
//!   - { at_s: 7, action: partition, groups: [[0, 1, 2, 3, 4], [5, 6, 7]], duration_s: 2 }
//! ```

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Smallest value a workload may write: the write id and the key index are encoded in it, so
/// that the final check can tell whose write a value is (see `verify`).
pub const MIN_VALUE_BYTES: usize = 32;
/// Largest keyspace: key indices must fit the operation log's packed entries (`oplog`).
pub const MAX_KEYS: u64 = 1 << 48;

/// A workload file, after defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Names the results directory.
    pub name: String,
    /// How the run reaches the nodes: credentials when the ring requires them (`--user`,
    /// `--password` or `$CHORDKV_PASSWORD`, else the local cluster's `requirepass` as user
    /// `default`) and TLS (`--tls`). Never read from or written to a file.
    #[serde(skip)]
    pub access: chordkv_client::Access,
    /// Measured time, after the warm-up.
    #[serde(default = "default_duration_s")]
    pub duration_s: f64,
    /// Load applied before measuring starts; not in the histograms (it is in the timeline).
    #[serde(default)]
    pub warmup_s: f64,
    /// Client connections.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Threads driving the connections; each thread has one request in flight at a time, so
    /// the concurrency is `min(threads, connections)`.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Open loop at this many operations per second in total; absent: closed loop.
    #[serde(default)]
    pub rate_per_s: Option<f64>,
    /// Stop after this many operations (warm-up included) even if time is left.
    #[serde(default)]
    pub max_ops: Option<u64>,
    /// Size of the keyspace.
    #[serde(default = "default_keys")]
    pub keys: u64,
    #[serde(default = "default_key_bytes")]
    pub key_bytes: usize,
    #[serde(default)]
    pub value_bytes: ValueSize,
    #[serde(default)]
    pub mix: Mix,
    /// Write every key once before the run.
    #[serde(default)]
    pub preload: bool,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub entry: Entry,
    #[serde(default)]
    pub distribution: Distribution,
    /// Per-request timeout.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Retries of a request that failed with a retryable error.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The local cluster to start when no `--nodes` are given.
    #[serde(default)]
    pub cluster: ClusterSection,
    /// Failures injected into the local cluster during the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
    /// A data-loss sweep instead of a load run (see [`Sweep`] and `sweep.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<Sweep>,
}

/// The data-loss experiment: for every replica count N in `replicas` and every kill count f
/// in `kill_counts`, `trials` times (seed `seed + trial`): start a fresh local cluster with
/// `--replicas N`, preload every key, SIGKILL f random nodes at once, wait for the survivors'
/// ring (at most `settle_timeout_s`), and read every key back.
///
/// ```yaml
/// sweep:
///   kill_counts: [1, 2, 3, 4]
///   replicas: [0, 1, 2]
///   trials: 2
/// ```
///
/// The fault sweep (`partition_lengths_s`, `pause_lengths_s`; see `fault_sweep.rs`) runs one
/// partition or one pause of each length L per trial, for every `acks` x
/// `partition_policies`, on the cluster's replica count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// f: nodes killed at once in a trial (the simultaneous-failure sweep; may be empty).
    #[serde(default)]
    pub kill_counts: Vec<usize>,
    /// T: seconds between kills under steady load (the kill-rate sweep; may be empty). Each
    /// trial runs the workload for `duration_s`, killing one random node every T seconds and
    /// starting a fresh one in its place.
    #[serde(default)]
    pub kill_intervals_s: Vec<f64>,
    /// N: extra copies of every key (`chordkv node --replicas N`), for the kill sweeps.
    #[serde(default)]
    pub replicas: Vec<u64>,
    /// L: seconds of the one partition of a trial (the fault sweep; may be empty). Each trial
    /// runs `fault_at_s + L + after_fault_s` seconds of load on a fresh cluster in network
    /// namespaces, cutting it between `partition_groups` at `fault_at_s` for L seconds.
    #[serde(default)]
    pub partition_lengths_s: Vec<f64>,
    /// L: seconds of the one pause (SIGSTOP, then SIGCONT) of one random node in a trial (the
    /// fault sweep; may be empty).
    #[serde(default)]
    pub pause_lengths_s: Vec<f64>,
    /// The fault sweep's `--ack` values [default: the cluster's].
    #[serde(default)]
    pub acks: Vec<AckPolicy>,
    /// The fault sweep's `--partition-policy` values [default: the cluster's].
    #[serde(default)]
    pub partition_policies: Vec<PartitionPolicy>,
    /// The fault sweep: seconds of load before the fault.
    #[serde(default = "default_fault_at_s")]
    pub fault_at_s: f64,
    /// The fault sweep: seconds of load after the fault ends (the final reads follow).
    #[serde(default = "default_after_fault_s")]
    pub after_fault_s: f64,
    /// The fault sweep's partition [default: the first half of the nodes, rounded up, against
    /// the rest: [[0, 1, 2], [3, 4]] for 5].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_groups: Option<Vec<Vec<usize>>>,
    /// Trials per (N, f).
    #[serde(default = "default_trials")]
    pub trials: u32,
    /// Bound of the wait, after the kill, for the survivors' ring to become consistent.
    #[serde(default = "default_settle_timeout_s")]
    pub settle_timeout_s: f64,
}

fn default_trials() -> u32 {
    1
}
fn default_settle_timeout_s() -> f64 {
    5.0
}
fn default_fault_at_s() -> f64 {
    2.0
}
fn default_after_fault_s() -> f64 {
    5.0
}

impl Sweep {
    /// Whether the sweep has partition or pause trials.
    pub fn has_fault_trials(&self) -> bool {
        !self.partition_lengths_s.is_empty() || !self.pause_lengths_s.is_empty()
    }

    /// Whether it kills nodes (`kill_counts` or `kill_intervals_s`).
    pub fn has_kill_trials(&self) -> bool {
        !self.kill_counts.is_empty() || !self.kill_intervals_s.is_empty()
    }

    /// The partition of its partition trials, on a cluster of `nodes`.
    pub fn groups(&self, nodes: usize) -> Vec<Vec<usize>> {
        self.partition_groups.clone().unwrap_or_else(|| {
            let majority = nodes - nodes / 2;
            vec![(0..majority).collect(), (majority..nodes).collect()]
        })
    }
}

/// What a fault does to its nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultAction {
    /// Crash live nodes (SIGKILL).
    Kill,
    /// Freeze live nodes (SIGSTOP), for `duration_s` if given (then SIGCONT), else until a
    /// `resume`.
    Pause,
    /// Unfreeze paused nodes (SIGCONT).
    Resume,
    /// Start dead nodes again on their addresses.
    Restart,
    /// Declare dead nodes gone for good, as an operator does with `chordkv forget IP:PORT`
    /// for a host that will not come back: a live node drops them from the ring and passes
    /// the notice on. Under the partition policy `consistent` a dead node stays a member until
    /// it returns or is forgotten, and a range whose majority of copies was on dead nodes is
    /// not served until then.
    Forget,
    /// Start new nodes that join the ring (`count` of them, default 1).
    Add,
    /// Stop live nodes gracefully (SIGTERM: they hand their keys over and leave).
    Remove,
    /// Cut the network between `groups` of nodes (packets dropped silently; clients still
    /// reach every node), for `duration_s` if given (then heal), else until a `heal` or the
    /// end of the load. Needs the local cluster in network namespaces, so root.
    Partition,
    /// Remove the partition in place.
    Heal,
}

impl FaultAction {
    /// The name used in files.
    pub fn name(self) -> &'static str {
        match self {
            FaultAction::Kill => "kill",
            FaultAction::Pause => "pause",
            FaultAction::Resume => "resume",
            FaultAction::Restart => "restart",
            FaultAction::Forget => "forget",
            FaultAction::Add => "add",
            FaultAction::Remove => "remove",
            FaultAction::Partition => "partition",
            FaultAction::Heal => "heal",
        }
    }
}

/// One entry of `faults:`: at `at_s` seconds after the measurement starts, apply `action` to
/// the nodes with the given indices (`nodes`), or to `count` nodes picked with the seed among
/// those it applies to (live ones for kill, pause and remove; paused ones for resume; dead ones
/// for restart and forget). Without `nodes` or `count`, one node. A partition names its `groups` of node
/// indices instead; a heal names nothing.
///
/// ```yaml
/// faults:
///   - { at_s: 3.0, action: kill, count: 2 }
///   - { at_s: 4, action: forget, count: 2 }
///   - { at_s: 5, action: pause, nodes: [1], duration_s: 2 }
///   - { at_s: 8, action: add }
///   - { at_s: 10, action: partition, groups: [[0, 1, 2], [3, 4]] }
///   - { at_s: 20, action: heal }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub at_s: f64,
    pub action: FaultAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<usize>>,
    /// `partition` only: the groups of node indices that can no longer reach each other
    /// (nodes in no group keep reaching everyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<Vec<usize>>>,
    /// `pause` and `partition` only: resume the nodes, or heal, after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
}

impl Fault {
    /// A fault of `action` at `at_s`, with nothing else given.
    pub fn new(at_s: f64, action: FaultAction) -> Fault {
        Fault {
            at_s,
            action,
            count: None,
            nodes: None,
            groups: None,
            duration_s: None,
        }
    }

    /// Nodes the fault picks when it names none.
    pub fn count_or_default(&self) -> usize {
        self.count.unwrap_or(1)
    }
}

fn default_duration_s() -> f64 {
    10.0
}
fn default_connections() -> usize {
    8
}
fn default_threads() -> usize {
    8
}
fn default_keys() -> u64 {
    10_000
}
fn default_key_bytes() -> usize {
    16
}
fn default_seed() -> u64 {
    1
}
fn default_request_timeout_ms() -> u64 {
    2_000
}
fn default_retries() -> u32 {
    2
}

/// The size of each written value: fixed (`100`) or uniform in a range (`{min: 64, max: 256}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ValueSize {
    Fixed(usize),
    Range { min: usize, max: usize },
}

impl Default for ValueSize {
    fn default() -> ValueSize {
        ValueSize::Fixed(100)
    }
}

impl ValueSize {
    pub fn min(&self) -> usize {
        match *self {
            ValueSize::Fixed(n) => n,
            ValueSize::Range { min, .. } => min,
        }
    }
    pub fn max(&self) -> usize {
        match *self {
            ValueSize::Fixed(n) => n,
            ValueSize::Range { max, .. } => max,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeSpec {
    min: usize,
    max: usize,
}

// Hand-written rather than `untagged`, so that an error inside the map keeps its location.
impl<'de> Deserialize<'de> for ValueSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ValueSize, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ValueSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes or a map {min, max}")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ValueSize, E> {
                usize::try_from(v)
                    .map(ValueSize::Fixed)
                    .map_err(|_| E::custom("value size out of range"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ValueSize, E> {
                u64::try_from(v)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ValueSize, A::Error> {
                let r = RangeSpec::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ValueSize::Range {
                    min: r.min,
                    max: r.max,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Relative weights of the operations; they need not add up to 1.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    #[serde(default)]
    pub get: f64,
    #[serde(default)]
    pub put: f64,
    #[serde(default)]
    pub delete: f64,
}

impl Default for Mix {
    fn default() -> Mix {
        Mix {
            get: 0.5,
            put: 0.5,
            delete: 0.0,
        }
    }
}

/// Which node a connection sends its requests to (the node routes them to the key's owner).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Entry {
    /// A node picked with the seed for each connection (and again after a failure).
    #[default]
    Random,
    /// Always the first node.
    Fixed,
    /// Client-side routing: each thread fetches the ring and sends every request straight to
    /// the key's owner, following REDIRECTs when its view is stale (like a Redis Cluster
    /// client with MOVED); one connection per node per thread.
    Owner,
}

impl std::str::FromStr for Entry {
    type Err = String;
    fn from_str(s: &str) -> Result<Entry, String> {
        match s {
            "random" => Ok(Entry::Random),
            "fixed" => Ok(Entry::Fixed),
            "owner" => Ok(Entry::Owner),
            other => Err(format!("unknown entry policy '{other}' (random, fixed or owner)")),
        }
    }
}

/// YCSB's default zipfian constant.
pub const DEFAULT_THETA: f64 = 0.99;
/// YCSB's `hotspotdatafraction` default.
pub const DEFAULT_HOT_DATA_FRACTION: f64 = 0.2;
/// YCSB's `hotspotopnfraction` default.
pub const DEFAULT_HOT_OP_FRACTION: f64 = 0.8;

/// Which key each operation touches. Written either as a bare name (`uniform`, `zipfian`,
/// with defaults) or as a one-key map with parameters (`{zipfian: {theta: 0.8}}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every key equally likely.
    #[default]
    Uniform,
    /// Key of rank i with probability proportional to 1/(i+1)^theta (YCSB's generator).
    Zipfian { theta: f64 },
    /// `hot_data_fraction` of the keys get `hot_op_fraction` of the operations (YCSB).
    Hotspot {
        hot_data_fraction: f64,
        hot_op_fraction: f64,
    },
    /// The same single key every time.
    Hotkey,
    /// Each thread walks the keyspace in order from its own starting point.
    Sequential,
    /// Puts write keys in sequence; gets and deletes favour the most recently written ones
    /// (zipfian over recency, theta 0.99, like YCSB's `latest`).
    Latest,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZipfianSpec {
    #[serde(default = "default_theta")]
    theta: f64,
}
fn default_theta() -> f64 {
    DEFAULT_THETA
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HotspotSpec {
    #[serde(default = "default_hot_data")]
    hot_data_fraction: f64,
    #[serde(default = "default_hot_op")]
    hot_op_fraction: f64,
}
fn default_hot_data() -> f64 {
    DEFAULT_HOT_DATA_FRACTION
}
fn default_hot_op() -> f64 {
    DEFAULT_HOT_OP_FRACTION
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

const DISTRIBUTIONS: &[&str] = &["uniform", "zipfian", "hotspot", "hotkey", "sequential", "latest"];

impl Distribution {
    fn with_defaults<E: de::Error>(name: &str) -> Result<Distribution, E> {
        Ok(match name {
            "uniform" => Distribution::Uniform,
            "zipfian" => Distribution::Zipfian { theta: DEFAULT_THETA },
            "hotspot" => Distribution::Hotspot {
                hot_data_fraction: DEFAULT_HOT_DATA_FRACTION,
                hot_op_fraction: DEFAULT_HOT_OP_FRACTION,
            },
            "hotkey" => Distribution::Hotkey,
            "sequential" => Distribution::Sequential,
            "latest" => Distribution::Latest,
            other => return Err(E::unknown_variant(other, DISTRIBUTIONS)),
        })
    }

    /// The name used in files.
    pub fn name(&self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian { .. } => "zipfian",
            Distribution::Hotspot { .. } => "hotspot",
            Distribution::Hotkey => "hotkey",
            Distribution::Sequential => "sequential",
            Distribution::Latest => "latest",
        }
    }
}

impl<'de> Deserialize<'de> for Distribution {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Distribution, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Distribution;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "one of {} or a one-entry map such as {{zipfian: {{theta: 0.99}}}}",
                    DISTRIBUTIONS.join(", ")
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Distribution, E> {
                Distribution::with_defaults(v)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Distribution, A::Error> {
                let Some(name) = map.next_key::<String>()? else {
                    return Err(de::Error::invalid_length(0, &self));
                };
                let dist = match name.as_str() {
                    "zipfian" => {
                        let s: Option<ZipfianSpec> = map.next_value()?;
                        Distribution::Zipfian {
                            theta: s.map_or(DEFAULT_THETA, |s| s.theta),
                        }
                    }
                    "hotspot" => {
                        let s: Option<HotspotSpec> = map.next_value()?;
                        let s = s.unwrap_or(HotspotSpec {
                            hot_data_fraction: DEFAULT_HOT_DATA_FRACTION,
                            hot_op_fraction: DEFAULT_HOT_OP_FRACTION,
                        });
                        Distribution::Hotspot {
                            hot_data_fraction: s.hot_data_fraction,
                            hot_op_fraction: s.hot_op_fraction,
                        }
                    }
                    other => {
                        let dist = Distribution::with_defaults(other)?;
                        let _: Option<NoParams> = map.next_value()?;
                        dist
                    }
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "a distribution is one entry; `{extra}` is a second one"
                    )));
                }
                Ok(dist)
            }
        }
        d.deserialize_any(V)
    }
}

/// How a write is acknowledged by the nodes (`chordkv node --ack`), and what they serve when
/// they cannot reach enough of a key's replicas (`--partition-policy`): the node's own types.
pub use chordkv_core::chord::config::{AckPolicy, PartitionPolicy};
pub use chordkv_core::options::NodeOptions;

/// The local cluster loadgen starts when it is not given `--nodes`: how many nodes, and the
/// options of every node, the same keys and defaults as `chordkv node`'s flags
/// ([`NodeOptions`]: `replicas`, `successors`, `ack`, `stabilize_ms`, `store`, `routing`,
/// `cache`, `partition_policy`, `max_clock_offset_ms`, `tombstone_grace_ms`, ...).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterSection {
    pub nodes: usize,
    #[serde(flatten)]
    pub node: NodeOptions,
}

fn default_cluster_nodes() -> usize {
    8
}

impl Default for ClusterSection {
    fn default() -> ClusterSection {
        ClusterSection {
            nodes: default_cluster_nodes(),
            node: NodeOptions::default(),
        }
    }
}

impl<'de> Deserialize<'de> for ClusterSection {
    /// `nodes` and the node options side by side in one mapping. The options are read by
    /// [`NodeOptions`]' own `Deserialize` straight from the file (no buffering, so an error
    /// keeps its line and column, and an unknown key is refused), with `nodes` taken out.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SectionVisitor;
        impl<'de> Visitor<'de> for SectionVisitor {
            type Value = ClusterSection;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of `nodes` and node options")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ClusterSection, A::Error> {
                let mut without = WithoutNodes { map, nodes: None };
                let node = NodeOptions::deserialize(de::value::MapAccessDeserializer::new(&mut without))?;
                Ok(ClusterSection {
                    nodes: without.nodes.unwrap_or_else(default_cluster_nodes),
                    node,
                })
            }
        }
        d.deserialize_map(SectionVisitor)
    }
}

/// A mapping with its `nodes` entry taken out (into `nodes`) as it is read.
struct WithoutNodes<A> {
    map: A,
    nodes: Option<usize>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for &mut WithoutNodes<A> {
    type Error = A::Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.map.next_key::<String>()? else {
                return Ok(None);
            };
            if key == "nodes" {
                self.nodes = Some(self.map.next_value()?);
                continue;
            }
            return seed
                .deserialize(de::IntoDeserializer::<A::Error>::into_deserializer(key))
                .map(Some);
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

impl ClusterSection {
    /// The arguments of every `chordkv node` this section asks for.
    pub fn node_args(&self) -> Vec<String> {
        self.node.to_args()
    }

    /// The partition policy the nodes run with.
    pub fn policy(&self) -> PartitionPolicy {
        self.node.partition_policy
    }

    /// Checks the node options together, as `chordkv node` would (before a cluster starts).
    ///
    /// # Errors
    /// [`crate::Error::Invalid`], naming the section and the option.
    pub fn validate(&self) -> crate::Result<()> {
        self.check().map_err(crate::Error::Invalid)
    }

    /// [`ClusterSection::validate`]'s check; the message names the section.
    fn check(&self) -> Result<(), String> {
        self.node
            .chord_config()
            .map(|_| ())
            .map_err(|e| format!("cluster: {e}"))
    }
}

/// A workload that could not be read: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadError {
    /// The file (or the name given to [`Workload::from_yaml`]).
    pub source: String,
    /// 1-based line and column, when the problem has a place in the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for WorkloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(
                f,
                "{}: line {line}, column {column}: {}",
                self.source, self.message
            ),
            _ => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

impl std::error::Error for WorkloadError {}

impl Workload {
    /// Reads and checks a workload file.
    pub fn load(path: &Path) -> Result<Workload, WorkloadError> {
        let text = std::fs::read_to_string(path).map_err(|e| WorkloadError {
            source: path.display().to_string(),
            line: None,
            column: None,
            message: format!("cannot read: {e}"),
        })?;
        Workload::from_yaml(&text, &path.display().to_string())
    }

    /// Parses and checks a workload; `source` names it in errors.
    pub fn from_yaml(text: &str, source: &str) -> Result<Workload, WorkloadError> {
        let workload: Workload = serde_yaml_ng::from_str(text).map_err(|e| {
            let location = e.location();
            let mut message = e.to_string();
            // The location is reported apart; drop the parser's own " at line L column C".
            if let Some(at) = message.find(" at line ") {
                message.truncate(at);
            }
            WorkloadError {
                source: source.to_string(),
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
                message,
            }
        })?;
        workload.check().map_err(|message| WorkloadError {
            source: source.to_string(),
            line: None,
            column: None,
            message,
        })?;
        Ok(workload)
    }

    /// Checks what the types cannot say (after command-line overrides, too).
    ///
    /// # Errors
    /// [`crate::Error::Invalid`], whose message names the field.
    pub fn validate(&self) -> crate::Result<()> {
        self.check().map_err(crate::Error::Invalid)
    }

    /// [`Workload::validate`]'s checks; the message names the field.
    fn check(&self) -> Result<(), String> {
        let positive = |v: f64, what: &str| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{what} must be a positive number, not {v}"))
            }
        };
        if self.name.is_empty() || self.name.contains(['/', '\\']) {
            return Err(format!(
                "name `{}` must be non-empty and without slashes",
                self.name
            ));
        }
        positive(self.duration_s, "duration_s")?;
        if !(self.warmup_s.is_finite() && self.warmup_s >= 0.0) {
            return Err(format!("warmup_s must be 0 or more, not {}", self.warmup_s));
        }
        if self.connections == 0 {
            return Err("connections must be at least 1".into());
        }
        if self.threads == 0 {
            return Err("threads must be at least 1".into());
        }
        if let Some(rate) = self.rate_per_s {
            positive(rate, "rate_per_s")?;
        }
        if self.keys == 0 || self.keys > MAX_KEYS {
            return Err(format!(
                "keys must be between 1 and {MAX_KEYS}, not {}",
                self.keys
            ));
        }
        let digits = (self.keys - 1).to_string().len();
        if self.key_bytes < digits + 1 || self.key_bytes > chordkv_protocol::MAX_KEY_BYTES {
            return Err(format!(
                "key_bytes must be between {} (\"k\" and {digits} digits for {} keys) and {}, not {}",
                digits + 1,
                self.keys,
                chordkv_protocol::MAX_KEY_BYTES,
                self.key_bytes
            ));
        }
        let (min, max) = (self.value_bytes.min(), self.value_bytes.max());
        if min < MIN_VALUE_BYTES || max < min || max > chordkv_protocol::MAX_VALUE_BYTES {
            return Err(format!(
                "value_bytes must be between {MIN_VALUE_BYTES} and {} with min <= max, not {min}..{max}",
                chordkv_protocol::MAX_VALUE_BYTES
            ));
        }
        let Mix { get, put, delete } = self.mix;
        if [get, put, delete].iter().any(|w| !w.is_finite() || *w < 0.0) || get + put + delete <= 0.0 {
            return Err("mix weights must be 0 or more and not all 0".into());
        }
        match self.distribution {
            Distribution::Zipfian { theta } if !(theta > 0.0 && theta < 1.0) => {
                return Err(format!(
                    "distribution zipfian: theta must be in (0, 1), not {theta}"
                ));
            }
            Distribution::Hotspot {
                hot_data_fraction,
                hot_op_fraction,
            } => {
                if !(hot_data_fraction > 0.0 && hot_data_fraction <= 1.0) {
                    return Err(format!(
                        "distribution hotspot: hot_data_fraction must be in (0, 1], not {hot_data_fraction}"
                    ));
                }
                if !(0.0..=1.0).contains(&hot_op_fraction) {
                    return Err(format!(
                        "distribution hotspot: hot_op_fraction must be in [0, 1], not {hot_op_fraction}"
                    ));
                }
            }
            _ => {}
        }
        if self.request_timeout_ms == 0 {
            return Err("request_timeout_ms must be at least 1".into());
        }
        if self.cluster.nodes == 0 {
            return Err("cluster.nodes must be at least 1".into());
        }
        self.cluster.check()?;
        self.validate_faults()?;
        self.validate_sweep()
    }

    /// Checks the `sweep:` section: non-empty lists, kill counts that leave a node alive.
    fn validate_sweep(&self) -> Result<(), String> {
        let Some(s) = &self.sweep else {
            return Ok(());
        };
        if !self.faults.is_empty() {
            return Err("sweep: a sweep injects its own faults; remove faults".into());
        }
        if !s.has_kill_trials() && !s.has_fault_trials() {
            return Err(
                "sweep.kill_counts (f nodes at once), sweep.kill_intervals_s (one node every T s), \
                 sweep.partition_lengths_s or sweep.pause_lengths_s must list at least one value"
                    .into(),
            );
        }
        self.validate_fault_sweep(s)?;
        if let Some(&bad) = s
            .kill_intervals_s
            .iter()
            .find(|&&t| !(t.is_finite() && t > 0.0 && t < self.duration_s))
        {
            return Err(format!(
                "sweep.kill_intervals_s: {bad} is out of range: more than 0 and less than \
                 duration_s ({} s), or no kill happens",
                self.duration_s
            ));
        }
        if s.has_kill_trials() && s.replicas.is_empty() {
            return Err("sweep.replicas must list at least one replica count".into());
        }
        let n = self.cluster.nodes;
        if let Some(&bad) = s.kill_counts.iter().find(|&&f| f == 0 || f >= n) {
            return Err(format!(
                "sweep.kill_counts: {bad} is out of range: between 1 and {} for {n} nodes \
                 (one must survive to read from)",
                n.saturating_sub(1)
            ));
        }
        if s.trials == 0 {
            return Err("sweep.trials must be at least 1".into());
        }
        if !(s.settle_timeout_s.is_finite() && s.settle_timeout_s >= 0.0) {
            return Err(format!(
                "sweep.settle_timeout_s must be 0 or more, not {}",
                s.settle_timeout_s
            ));
        }
        Ok(())
    }

    /// Checks the fault sweep's fields.
    fn validate_fault_sweep(&self, s: &Sweep) -> Result<(), String> {
        let lengths = [
            ("sweep.partition_lengths_s", &s.partition_lengths_s),
            ("sweep.pause_lengths_s", &s.pause_lengths_s),
        ];
        for (field, values) in lengths {
            if let Some(bad) = values.iter().find(|&&l| !(l.is_finite() && l > 0.0)) {
                return Err(format!("{field}: {bad} is not a positive number of seconds"));
            }
        }
        if !(s.fault_at_s.is_finite() && s.fault_at_s >= 0.0) {
            return Err(format!(
                "sweep.fault_at_s must be 0 or more, not {}",
                s.fault_at_s
            ));
        }
        if !(s.after_fault_s.is_finite() && s.after_fault_s > 0.0) {
            return Err(format!(
                "sweep.after_fault_s must be a positive number, not {}",
                s.after_fault_s
            ));
        }
        if !s.partition_lengths_s.is_empty() {
            let n = self.cluster.nodes;
            chordkv_harness::netns::check_groups(&s.groups(n), n)
                .map_err(|e| format!("sweep.partition_groups: {e} (indices 0 to {})", n - 1))?;
        }
        Ok(())
    }

    /// Checks the `faults:` list: times within the measured run, counts of at least 1, node
    /// indices that exist when the fault fires (the initial nodes and those added before).
    fn validate_faults(&self) -> Result<(), String> {
        for (n, f) in self.faults.iter().enumerate() {
            let at = format!("faults[{n}] ({} at {} s)", f.action.name(), f.at_s);
            if !(f.at_s.is_finite() && f.at_s >= 0.0 && f.at_s < self.duration_s) {
                return Err(format!(
                    "{at}: at_s must be within the run, in [0, duration_s = {})",
                    self.duration_s
                ));
            }
            if f.count == Some(0) {
                return Err(format!("{at}: count must be at least 1"));
            }
            if f.count.is_some() && f.nodes.is_some() {
                return Err(format!("{at}: give either count or nodes, not both"));
            }
            match (f.action, f.duration_s) {
                (FaultAction::Pause | FaultAction::Partition, Some(d)) if !(d.is_finite() && d > 0.0) => {
                    return Err(format!("{at}: duration_s must be a positive number, not {d}"));
                }
                (FaultAction::Pause | FaultAction::Partition, _) | (_, None) => {}
                (_, Some(_)) => return Err(format!("{at}: duration_s is for pause and partition only")),
            }
            let exist = self.cluster.nodes + self.nodes_added_before(f.at_s);
            match (f.action, &f.groups) {
                (FaultAction::Partition, None) => {
                    return Err(format!(
                        "{at}: a partition needs its groups, e.g. groups: [[0, 1, 2], [3, 4]]"
                    ));
                }
                (FaultAction::Partition, Some(groups)) => {
                    if f.count.is_some() || f.nodes.is_some() {
                        return Err(format!("{at}: a partition names groups, not count or nodes"));
                    }
                    chordkv_harness::netns::check_groups(groups, exist)
                        .map_err(|e| format!("{at}: groups: {e} (indices 0 to {})", exist - 1))?;
                }
                (FaultAction::Heal, _) => {
                    if f.count.is_some() || f.nodes.is_some() || f.groups.is_some() {
                        return Err(format!(
                            "{at}: a heal removes the partition in place; give no count, nodes or groups"
                        ));
                    }
                }
                (_, Some(_)) => return Err(format!("{at}: groups is for partition only")),
                (_, None) => {}
            }
            if let Some(nodes) = &f.nodes {
                if f.action == FaultAction::Add {
                    return Err(format!("{at}: add starts new nodes; give count, not nodes"));
                }
                if nodes.is_empty() {
                    return Err(format!("{at}: nodes must name at least one node"));
                }
                if let Some(bad) = nodes.iter().find(|&&i| i >= exist) {
                    return Err(format!(
                        "{at}: node index {bad} is out of range: {exist} nodes exist then \
                         (indices 0 to {})",
                        exist - 1
                    ));
                }
            }
        }
        Ok(())
    }

    /// Nodes the faults add before `at_s`.
    fn nodes_added_before(&self, at_s: f64) -> usize {
        self.faults
            .iter()
            .filter(|g| g.action == FaultAction::Add && g.at_s < at_s)
            .map(Fault::count_or_default)
            .sum()
    }

    /// Whether the run is open loop (a target rate).
    pub fn is_open_loop(&self) -> bool {
        self.rate_per_s.is_some()
    }

    /// Whether a fault cuts the network: the local cluster must then run in network
    /// namespaces.
    pub fn has_partitions(&self) -> bool {
        self.faults.iter().any(|f| f.action == FaultAction::Partition)
    }
}
