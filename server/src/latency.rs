//! Client request latency, measured always (with or without `--metrics`) and reported in
//! `GET_STATS` as cumulative bucket counts, so `chordkv top` can compute the p99 of any
//! interval from two snapshots against any node.
//!
//! A client request is timed from when the event loop hands it to the core to when the core's
//! reply leaves for its connection; the histogram here counts client operations only (GET, PUT,
//! DELETE, EXECUTE, scan steps: not the GET_INFO and GET_STATS of a monitor, whose key count
//! takes a scan and would make a quiet node's p99 the monitor's own). The start is kept on the connection ([`Started`]: a short
//! queue of `(request id, Instant)`, found by a scan from the front because replies mostly
//! leave in order), not in a map, so a request costs two clock reads, a push, a pop and one
//! bucket increment ([`Histogram::observe`]: a binary search over 18 bounds): no hashing, no
//! allocation once the queue has grown to the connection's requests in flight. `--metrics`
//! reuses the same measurement for its per-command histograms.
//!
//! In `GET_STATS` (names appended to the core's list, so an older client shows them as more
//! counters and a newer one reads a node without them as "no latency"):
//!
//! ```text
//!   latency_le_us.25 .. latency_le_us.10000000   requests answered within that many µs
//!   latency_le_us.inf                            every request timed (= latency_count)
//!   latency_count, latency_sum_us                requests timed, their total time in µs
//! ```
//!
//! The counts are cumulative over buckets (`le`, Prometheus' convention) and over time since
//! the node started; a reader takes differences between two snapshots.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Upper bounds of the latency buckets, 25 µs (a GET served by the node that received it takes
/// about 20 µs) to 10 s; one more bucket, unbounded, follows.
pub const LATENCY_BUCKETS_SECONDS: [f64; 18] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Prefix of a cumulative bucket's name in `GET_STATS`; the bound in µs, or `inf`, follows.
pub const BUCKET_PREFIX: &str = "latency_le_us.";
/// `GET_STATS` name of the number of requests timed.
pub const COUNT_NAME: &str = "latency_count";
/// `GET_STATS` name of their total time, in µs.
pub const SUM_NAME: &str = "latency_sum_us";

/// Requests of one connection timed at once at most; beyond, the oldest is forgotten (a binary
/// client has at most `MAX_CLIENT_REQUESTS_IN_FLIGHT`; this bounds what a reply that never
/// comes can leave behind).
pub const MAX_TIMED_PER_CONNECTION: usize = 1_024;

/// [`LATENCY_BUCKETS_SECONDS`] in nanoseconds: a request is counted by integer compares, not
/// by converting its time to seconds first (this runs once per reply).
const LATENCY_BUCKETS_NANOS: [u64; LATENCY_BUCKETS_SECONDS.len()] = {
    let mut nanos = [0; LATENCY_BUCKETS_SECONDS.len()];
    let mut i = 0;
    while i < nanos.len() {
        nanos[i] = (LATENCY_BUCKETS_SECONDS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    nanos
};

/// One latency histogram: counts per bucket (not cumulative), their sum in nanoseconds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Histogram {
    counts: [u64; LATENCY_BUCKETS_SECONDS.len() + 1],
    sum_nanos: u128,
}

impl Histogram {
    /// Counts one request that took `elapsed` (in the first bucket whose bound it does not
    /// exceed).
    pub fn observe(&mut self, elapsed: Duration) {
        self.observe_timed(Timed::new(elapsed));
    }

    /// [`Histogram::observe`] of a time whose bucket is known.
    pub fn observe_timed(&mut self, timed: Timed) {
        self.counts[timed.bucket] += 1;
        self.sum_nanos += timed.elapsed.as_nanos();
    }

    /// Requests counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Their total time, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 * 1e-9
    }

    /// `(upper bound, count in this bucket alone)`, `+Inf` last: prometheus-client's encoder
    /// adds them up into the text format's cumulative buckets itself.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        let bounds = LATENCY_BUCKETS_SECONDS.iter().copied().chain([f64::INFINITY]);
        bounds.zip(self.counts).collect()
    }

    /// The `GET_STATS` entries of this histogram (see the module docs): cumulative buckets by
    /// bound in µs, then the count and the sum in µs.
    pub fn stat_counters(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        let mut total = 0;
        let buckets = self.buckets().into_iter().map(move |(bound, n)| {
            total += n;
            let name = if bound.is_finite() {
                format!("{BUCKET_PREFIX}{}", (bound * 1e6).round() as u64)
            } else {
                format!("{BUCKET_PREFIX}inf")
            };
            (name, total)
        });
        let sum_us = u64::try_from((self.sum_nanos + 500) / 1_000).unwrap_or(u64::MAX);
        buckets.chain([
            (COUNT_NAME.to_string(), self.count()),
            (SUM_NAME.to_string(), sum_us),
        ])
    }
}

/// A request's time and the index of its [`Histogram`] bucket (the first whose bound it does
/// not exceed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timed {
    pub elapsed: Duration,
    bucket: usize,
}

impl Timed {
    fn new(elapsed: Duration) -> Timed {
        let capped = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_NANOS.partition_point(|&b| b < capped);
        Timed { elapsed, bucket }
    }
}

/// Request times from their instants, computed once for each pair: the requests read in one
/// turn of the loop share their start (`Started::start` takes the turn's poll time) and the
/// replies of one turn their end, so a pipeline's replies repeat one pair, and the clock
/// arithmetic and bucket search of each were an eighth of a reply's instructions in the loop
/// (callgrind, `redis-benchmark -P 16`).
#[derive(Debug, Default)]
pub(crate) struct Elapsed {
    last: Option<(Instant, Instant, Timed)>,
}

impl Elapsed {
    /// The time from `at` to `now` (zero when `now` is the earlier).
    pub fn between(&mut self, at: Instant, now: Instant) -> Timed {
        match self.last {
            Some((a, n, timed)) if a == at && n == now => timed,
            _ => {
                let timed = Timed::new(now.saturating_duration_since(at));
                self.last = Some((at, now, timed));
                timed
            }
        }
    }
}

/// The starts of a connection's client requests in the core, oldest first, each marked whether
/// it is a client operation (`Message::is_client_op`: GET, PUT, DELETE, EXECUTE, a scan step).
#[derive(Debug, Default)]
pub(crate) struct Started(VecDeque<(u64, Instant, bool)>);

impl Started {
    /// Request `request_id` was read at `at` (the loop's last poll: the clock is read once per
    /// turn of the loop, not per request) and enters the core. When
    /// [`MAX_TIMED_PER_CONNECTION`] are waiting already, the oldest is no longer timed: a reply
    /// that never came cannot stop the timing of a long-lived connection.
    pub fn start(&mut self, request_id: u64, client_op: bool, at: Instant) {
        if self.0.len() == MAX_TIMED_PER_CONNECTION {
            self.0.pop_front();
        }
        self.0.push_back((request_id, at, client_op));
    }

    /// When request `request_id` entered the core and whether it is a client operation,
    /// forgetting it; `None` when it was not timed. The caller reads the clock once per turn
    /// of the loop for the replies (as [`Started::start`] for the requests), so a request is
    /// timed to within a turn, as Redis times its commands to within its cached clock.
    pub fn finish(&mut self, request_id: u64) -> Option<(Instant, bool)> {
        let (_, at, op) = if self.0.front().is_some_and(|(id, _, _)| *id == request_id) {
            self.0.pop_front()?
        } else {
            let i = self.0.iter().position(|(id, _, _)| *id == request_id)?;
            self.0.remove(i)?
        };
        Some((at, op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_bucket_with_inf_last() {
        let mut h = Histogram::default();
        h.observe(Duration::from_secs_f64(0.000_05));
        h.observe(Duration::from_secs_f64(0.003));
        h.observe(Duration::from_secs_f64(60.0));
        let b = h.buckets();
        assert_eq!(b[..2], [(0.000_025, 0), (0.000_05, 1)]);
        assert_eq!(b.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn a_bound_is_inclusive_to_the_nanosecond_and_no_time_overflows() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(25));
        h.observe(Duration::from_nanos(25_001));
        h.observe(Duration::MAX);
        h.observe(Duration::MAX);
        let b = h.buckets();
        assert_eq!(b[..2], [(0.000_025, 1), (0.000_05, 1)]);
        assert_eq!(b.last(), Some(&(f64::INFINITY, 2)));
        assert!(h.sum_seconds() > 1e19);
        let sum = h.stat_counters().find(|(name, _)| name == SUM_NAME);
        assert_eq!(sum, Some((SUM_NAME.to_string(), u64::MAX)));
    }

    #[test]
    fn stat_counters_are_cumulative_by_bound_in_micros() {
        let mut h = Histogram::default();
        h.observe(Duration::from_secs_f64(0.000_02));
        h.observe(Duration::from_secs_f64(0.000_04));
        h.observe(Duration::from_secs_f64(0.003));
        let c: Vec<(String, u64)> = h.stat_counters().collect();
        assert_eq!(c.len(), LATENCY_BUCKETS_SECONDS.len() + 3);
        assert_eq!(c[0], ("latency_le_us.25".to_string(), 1));
        assert_eq!(c[1], ("latency_le_us.50".to_string(), 2));
        assert!(c.contains(&("latency_le_us.2500".to_string(), 2)));
        assert!(c.contains(&("latency_le_us.5000".to_string(), 3)));
        assert!(c.contains(&("latency_le_us.10000000".to_string(), 3)));
        assert!(c.contains(&("latency_le_us.inf".to_string(), 3)));
        assert!(c.contains(&("latency_count".to_string(), 3)));
        assert!(c.contains(&("latency_sum_us".to_string(), 3_060)));
    }

    #[test]
    fn a_repeated_pair_of_instants_is_timed_as_the_first() {
        let start = Instant::now();
        let (a, b) = (
            start + Duration::from_micros(30),
            start + Duration::from_millis(3),
        );
        let mut e = Elapsed::default();
        let mut h = Histogram::default();
        for (at, now) in [(start, a), (start, a), (start, b), (b, a), (start, a)] {
            let t = e.between(at, now);
            assert_eq!(t, Timed::new(now.saturating_duration_since(at)));
            h.observe_timed(t);
        }
        let mut g = Histogram::default();
        for d in [30, 30, 3_000, 0, 30] {
            g.observe(Duration::from_micros(d));
        }
        assert_eq!(h.buckets(), g.buckets());
        assert_eq!(h.sum_seconds(), g.sum_seconds());
    }

    #[test]
    fn started_requests_finish_in_any_order_and_once() {
        let mut s = Started::default();
        s.start(1, true, Instant::now());
        s.start(2, false, Instant::now());
        assert!(s.finish(2).is_some_and(|(_, op)| !op));
        assert!(s.finish(2).is_none());
        assert!(s.finish(1).is_some_and(|(_, op)| op));
        assert!(s.finish(7).is_none());
    }

    #[test]
    fn a_connection_times_a_bounded_number_of_requests_the_newest_ones() {
        let mut s = Started::default();
        let n = MAX_TIMED_PER_CONNECTION as u64;
        for id in 0..n + 5 {
            s.start(id, true, Instant::now());
        }
        assert_eq!(s.0.len(), MAX_TIMED_PER_CONNECTION);
        assert!(s.finish(4).is_none());
        assert!(s.finish(5).is_some());
        assert!(s.finish(n + 4).is_some());
    }
}
