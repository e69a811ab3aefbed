//! Tunables of the Chord core, each with its unit in its name.

/// Default length of the successor list (Chord's `r`).
pub const DEFAULT_SUCCESSORS: usize = 8;
/// Default period of `stabilize` and `check_predecessor`.
pub const DEFAULT_STABILIZE_INTERVAL_MS: u64 = 250;

/// Configuration of one node's state machine. Times are in milliseconds of the driver's clock.
#[derive(Clone, Debug)]
pub struct Config {
    /// Length `r` of the successor list: the ring survives `r - 1` adjacent failures.
    pub successors: usize,
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
    /// Most key and value bytes in one transfer batch (one item always fits, whatever its size).
    pub transfer_batch_bytes: usize,
    /// Most client requests held while a key range is being received.
    pub max_held_requests: usize,
    /// A request that needs more overlay hops than this fails (a routing loop guard).
    pub max_hops: u16,
    /// How long a peer that failed to answer stays excluded from routing choices.
    pub dead_peer_ttl_ms: u64,
    /// How long a graceful leave may take before the node leaves anyway.
    pub leave_timeout_ms: u64,
    /// Seed of the node's RNG (timer jitter): the same seed and inputs give the same run.
    pub seed: u64,
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
            successors: DEFAULT_SUCCESSORS,
            stabilize_interval_ms: stabilize_ms,
            fix_fingers_interval_ms: (stabilize_ms / 2).max(1),
            check_predecessor_interval_ms: stabilize_ms,
            rpc_timeout_ms: (stabilize_ms * 4).clamp(200, 2_000),
            request_timeout_ms: 10_000,
            transfer_stall_timeout_ms: 10_000,
            transfer_batch_items: 1_024,
            transfer_batch_bytes: 4 << 20,
            max_held_requests: 50_000,
            max_hops: 32,
            dead_peer_ttl_ms: stabilize_ms * 8,
            leave_timeout_ms: 30_000,
            seed: 0,
        }
    }
}
