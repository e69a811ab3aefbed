//! Per-node clocks with skew and drift, within a bound.
//!
//! Node `i` reads `epoch + t + dev_i(t)` where `t` is the true simulated time and
//!
//! ```text
//!   dev_i(t) = clamp(offset_i + floor(drift_ppm_i * t / 10^6),  -half_bound, +half_bound)
//!
//!   reading ▲                          ╱ node a: offset +200 ms, drift +100 ppm; clamped at +250
//!           │                      ╱ ╱   (an NTP-disciplined clock is steered back into its bound)
//!           │                  ╱ ╱ ╱  true time
//!           │              ╱ ╱ ╱
//!           │            ╱ ╱ ╱     node b: offset -250 ms
//!           └─────────────────────► t
//! ```
//!
//! Every deviation stays within `±half_bound`, so any two clocks differ by at most
//! `2 * half_bound`: the simulator sets `half_bound = chord.max_clock_offset_ms / 2`, the
//! bound the core is told to assume. A clock never runs backwards: with `|drift| < 10^6 ppm`
//! the floor term moves by at most one millisecond per millisecond, and clamping keeps that,
//! so a reading moves by 0, 1 or 2 per true millisecond. `epoch = half_bound` keeps every
//! reading non-negative.
//!
//! [`NodeClock::TRUE`] (no skew, no drift) reads `t` itself: a simulation without clock
//! faults runs exactly as before they existed.

use chordkv_core::chord::Millis;

/// Largest drift the model accepts: beyond it a clock could stand still for long stretches.
pub const MAX_DRIFT_PPM: u64 = 100_000;

/// One node's clock as a function of true simulated time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeClock {
    /// Added to every reading, the same for every node of a simulation.
    pub epoch_ms: u64,
    /// The deviation from true time at `t = 0`.
    pub offset_ms: i64,
    /// How fast the deviation grows, in parts per million of elapsed true time.
    pub drift_ppm: i64,
    /// The deviation never leaves `[-half_bound_ms, half_bound_ms]`.
    pub half_bound_ms: u64,
}

impl NodeClock {
    /// A perfect clock: it reads true time.
    pub const TRUE: NodeClock = NodeClock {
        epoch_ms: 0,
        offset_ms: 0,
        drift_ppm: 0,
        half_bound_ms: 0,
    };

    /// The clock's reading at true time `t`.
    pub fn read(&self, t: Millis) -> Millis {
        if *self == NodeClock::TRUE {
            return t;
        }
        let drift = (self.drift_ppm as i128 * t as i128).div_euclid(1_000_000);
        let bound = self.half_bound_ms as i128;
        let dev = (self.offset_ms as i128 + drift).clamp(-bound, bound);
        (self.epoch_ms as i128 + t as i128 + dev).clamp(0, Millis::MAX as i128) as Millis
    }

    /// The first true time at or after `from` at which the clock reads at least `reading`
    /// (`Millis::MAX` for `Millis::MAX`, "never"). Converts a node's `next_deadline()` back to
    /// the simulation's time.
    pub fn true_time_at(&self, reading: Millis, from: Millis) -> Millis {
        if reading == Millis::MAX {
            return Millis::MAX;
        }
        if *self == NodeClock::TRUE {
            return reading.max(from);
        }
        if self.read(from) >= reading {
            return from;
        }
        // The clock gains at least half a millisecond per millisecond (drift is bounded), so
        // the answer is within twice the gap; double until it is, then bisect.
        let mut lo = from;
        let mut span = (reading - self.read(from)).saturating_mul(2).max(1);
        let mut hi = from.saturating_add(span);
        while self.read(hi) < reading {
            if hi == Millis::MAX {
                return Millis::MAX;
            }
            lo = hi;
            span = span.saturating_mul(2);
            hi = from.saturating_add(span);
        }
        // Invariant: read(lo) < reading <= read(hi).
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.read(mid) >= reading {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clocks() -> Vec<NodeClock> {
        let mut v = Vec::new();
        for offset in [-250, -100, 0, 37, 250] {
            for drift in [-100_000, -200, 0, 150, 100_000] {
                v.push(NodeClock {
                    epoch_ms: 250,
                    offset_ms: offset,
                    drift_ppm: drift,
                    half_bound_ms: 250,
                });
            }
        }
        v
    }

    #[test]
    fn a_true_clock_reads_true_time() {
        for t in [0, 1, 999, 1 << 40] {
            assert_eq!(NodeClock::TRUE.read(t), t);
            assert_eq!(NodeClock::TRUE.true_time_at(t, 5), t.max(5));
        }
        assert_eq!(NodeClock::TRUE.true_time_at(Millis::MAX, 5), Millis::MAX);
    }

    #[test]
    fn clocks_are_monotonic_and_stay_within_the_bound() {
        for c in clocks() {
            let mut last = c.read(0);
            for t in (0..3_000_000).step_by(997).chain(3_000_000..3_002_000) {
                let r = c.read(t);
                assert!(r >= last, "{c:?} went back at {t}: {last} -> {r}");
                let dev = r as i64 - t as i64 - c.epoch_ms as i64;
                assert!(dev.abs() <= 250, "{c:?} at {t}: deviation {dev}");
                last = r;
            }
        }
    }

    #[test]
    fn true_time_at_is_the_first_time_the_clock_reaches_the_reading() {
        for c in clocks() {
            for from in [0, 17, 50_000, 2_000_000] {
                for ahead in [0, 1, 2, 99, 12_345] {
                    let reading = c.read(from) + ahead;
                    let t = c.true_time_at(reading, from);
                    assert!(t >= from);
                    assert!(c.read(t) >= reading, "{c:?}");
                    assert!(t == from || c.read(t - 1) < reading, "{c:?}: not the first");
                }
                // A reading already passed is due at once.
                assert_eq!(c.true_time_at(c.read(from).saturating_sub(5), from), from);
            }
        }
    }
}
