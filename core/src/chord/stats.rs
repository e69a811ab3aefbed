//! The node's counters, declared once: the struct, and the `(name, value)` list
//! `GET_STATS` reports, come from one table, so a new counter is one line.

use super::node::{Millis, Node};
use crate::store::RangeCounts;

/// Declares [`Stats`] and its [`Stats::counters`] from one list of fields (a field's name is
/// the counter's name in `GET_STATS`, `chordkv stats` and INFO).
macro_rules! counters {
    ($($(#[$doc:meta])* $field:ident,)*) => {
        /// Event counters reported by `GET_STATS` (monotonic unless a doc says otherwise).
        #[derive(Clone, Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $field: u64,)*
        }

        impl Stats {
            /// Every counter as `(name, value)`, in declaration order.
            pub fn counters(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
                [$((stringify!($field), self.$field),)*].into_iter()
            }
        }
    };
}

counters! {
    ops_get,
    ops_put,
    ops_delete,
    /// Executes (INCR, SETNX, a transaction, ...) served as the owner...
    ops_execute,
    /// ...the requests that waited for another Execute's keys (or an Execute for writes)...
    execute_waits,
    /// ...and Executes that ran nothing because a watched key had changed.
    execute_watch_aborts,
    /// Expired values replaced with tombstones (by the sweep, or when an Execute read them).
    keys_expired,
    ops_coordinated,
    ops_failed,
    hops_total,
    hops_max,
    redirects_sent,
    lookups_answered,
    rpc_timeouts,
    peers_failed,
    requests_held,
    transfers_in,
    transfers_out,
    keys_received,
    keys_sent,
    store_errors,
    messages_sent,
    messages_received,
    replica_writes_sent,
    replica_batches_sent,
    replica_writes_applied,
    failovers_served,
    anti_entropy_rounds,
    anti_entropy_keys_repaired,
    anti_entropy_last_round_repaired,
    tombstones_collected,
    /// Tombstone collections this node started as a primary: a clean anti-entropy round's, on
    /// every copy of its range, or its own alone. A clean round whose range holds no tombstone
    /// old enough to go starts none (its digest scan tells), so a ring that only writes
    /// never scans its stores for tombstones.
    tombstone_collections,
    stray_copies_collected,
    /// Client operations whose owner came from the location cache...
    cache_hits,
    /// ...or that needed a remote lookup the cache could not save...
    cache_misses,
    /// ...and cache hits whose owner redirected (a stale entry: one extra hop).
    cache_stale,
    /// Routing maintenance requests sent (stabilize, notify, check_predecessor, finger and
    /// join lookups, membership pages and broadcasts); each has one reply.
    maintenance_sent,
    /// Stabilize rounds started (a `GET_NEIGHBORS` to the first live successor).
    stabilize_rounds,
    /// Membership events detected here and disseminated (one-hop).
    member_events_detected,
    /// Membership events received that changed the table (one-hop).
    member_events_applied,
    /// Client operations refused because their deadline had passed (or was too close for the
    /// clock offset bound) when they reached the owner: never applied.
    late_requests_refused,
    /// Client operations refused for want of a valid lease on their range (`consistent`).
    ops_refused_no_lease,
    /// Messages refused for carrying a version from the future (`max_clock_offset_ms`).
    future_versions_refused,
    /// Times the store reported it had lost its data.
    store_losses,
    /// Successors adopted from a departed node that answered again (`available`: rings that
    /// formed during a partition merging).
    ring_merges,
    /// Write hops delivered a second time and dropped.
    duplicates_dropped,
    /// Predecessors replaced by a nearer member found through `check_predecessor`.
    predecessors_corrected,
    /// Starts that found the ring still listing this node, which took its place at once.
    rejoined_as_member,
    /// `GET`s answered from this node's copy without the primary's lease (`--read-from
    /// replicas`), at the primary or a replica.
    copy_reads,
    /// Store ops (digests, key counts) answered from the host's cache of the store's unchanged
    /// answers, without a scan (`store_cache.rs`).
    store_answers_cached,
}

impl Node {
    /// How many ring positions (vnodes) this node estimates the ring has, itself included:
    /// exact with one-hop membership (its table) or when the successor list reaches around
    /// the ring (it names every other position); otherwise the successor list's density, its
    /// length over the fraction of the ring it spans (k successors spread over a fraction f of
    /// the ring: about k / f positions in all; the standard Chord size estimate, e.g. Mahajan,
    /// Castro and Rowstron, "Controlling the cost of reliability in peer-to-peer overlays",
    /// IPTPS 2003, section 3). Within a factor of about 1 +- 1/sqrt(k) of the truth.
    pub fn ring_size_estimate(&self) -> u64 {
        if let Some(members) = &self.members {
            return members.len().max(1) as u64;
        }
        let list = self.routing.successors();
        let Some(last) = list.last() else {
            return 1;
        };
        let span = self.me.id.distance_to(&last.id).as_fraction();
        if self.succ_wrapped || span <= 0.0 {
            return list.len() as u64 + 1;
        }
        (list.len() as f64 / span).round() as u64
    }

    /// Named counters for `GET_STATS` at `now`, given the live keys held in all and the counts
    /// of the primary range (live keys, those with an expiry ahead and their remaining lives).
    pub fn stat_counters(&self, now: Millis, keys: u64, primary: RangeCounts) -> Vec<(String, u64)> {
        let keys_primary = primary.live;
        let (leases_valid, leases_held) = self.leases.counts(now);
        let members_down = self.neighbour_members().filter(|n| self.is_dead(&n.addr)).count();
        let gauges: [(&str, u64); 19] = [
            ("keys", keys),
            ("keys_primary", keys_primary),
            // INFO keyspace's `expires` and (divided by it) `avg_ttl`.
            ("keys_primary_expiring", primary.expiring),
            ("keys_primary_ttl_remaining_ms", primary.ttl_ms_sum),
            ("keys_replica", keys.saturating_sub(keys_primary)),
            ("replicas", self.config.replicas as u64),
            ("routing_nodes", self.routing.distinct_nodes() as u64),
            ("ring_size_estimate", self.ring_size_estimate()),
            ("routing_state", self.routing_state() as u64),
            ("finger_runs", self.routing.finger_runs() as u64),
            ("cache_entries", self.cache.len() as u64),
            ("successors", self.routing.successors().len() as u64),
            ("ops_in_flight", self.client.ops.len() as u64),
            ("writes_waiting_for_replicas", self.repl.writes.len() as u64),
            ("departed", self.live.departed.len() as u64),
            ("leases_held", leases_held as u64),
            ("leases_valid", leases_valid as u64),
            ("members_down", members_down as u64),
            // 1 while some copies of this node lost their data and are not refilled (`trust.rs`).
            ("copies_untrusted", u64::from(self.trust.lost_at().is_some())),
        ];
        let all = gauges.into_iter().chain(self.stats.counters());
        all.map(|(k, v)| (k.to_string(), v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_listed_once_under_its_name() {
        let s = Stats {
            ops_get: 3,
            anti_entropy_last_round_repaired: 7,
            ..Stats::default()
        };
        let list: Vec<_> = s.counters().collect();
        let names: std::collections::BTreeSet<_> = list.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), list.len(), "no name twice");
        assert!(list.contains(&("ops_get", 3)));
        assert!(list.contains(&("anti_entropy_last_round_repaired", 7)));
    }
}
