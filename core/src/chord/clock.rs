//! The version clock: a hybrid logical clock (HLC) packed into a `u64`.
//!
//! Every write is stamped by its owner with `version = max(now_ms << 16, last + 1)`; every
//! message that carries versions (transfers, notify replies) moves the receiver's clock past
//! them. So a node that takes over a key range stamps every later write above every version
//! the previous owner issued, and "keep the highest version" is a safe merge rule for every
//! copy, transfer and repair. Time comes in as a value, like everything in the core.

/// Bits of logical counter below the milliseconds.
const LOGICAL_BITS: u32 = 16;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// A fresh version for a write at `now_ms`, above every version seen so far.
    pub fn stamp(&mut self, now_ms: u64) -> u64 {
        let physical = now_ms.saturating_mul(1 << LOGICAL_BITS);
        self.last = physical.max(self.last + 1);
        self.last
    }

    /// Moves the clock past a version seen from elsewhere.
    pub fn observe(&mut self, version: u64) {
        self.last = self.last.max(version);
    }

    /// The highest version stamped or observed.
    pub fn current(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_increase_even_when_time_stands_still_or_goes_back() {
        let mut c = Hlc::default();
        let a = c.stamp(1_000);
        let b = c.stamp(1_000);
        let d = c.stamp(900);
        assert!(a < b && b < d);
        c.observe(d + 100);
        assert!(c.stamp(900) > d + 100);
    }
}
