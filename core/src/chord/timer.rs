//! The node's timers in one table: each maintenance round and retry is a [`Timer`] armed for a
//! time on the driver's clock; `tick` asks which are due and [`Node::next_deadline`] is the
//! table's minimum together with the deadlines other state keeps (requests, retries,
//! transfers).
//!
//! [`Node::next_deadline`]: super::Node::next_deadline

use super::node::Millis;

/// A periodic round or a one-shot retry of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// `stabilize` (and the one-hop broadcast and lease renewal that ride on it).
    Stabilize,
    CheckPredecessor,
    FixFingers,
    /// The next anti-entropy round (armed only with replicas).
    AntiEntropy,
    /// A join lookup that failed, tried again.
    JoinRetry,
}

impl Timer {
    const COUNT: usize = 5;

    fn index(self) -> usize {
        self as usize
    }
}

/// When each [`Timer`] fires next (`None`: not armed).
#[derive(Clone, Debug)]
pub(super) struct Timers {
    at: [Option<Millis>; Timer::COUNT],
}

impl Timers {
    /// The maintenance rounds armed for `now` (`schedule_maintenance` spreads them out);
    /// anti-entropy too when the node keeps replicas or its store kept data from an earlier
    /// run (a node without replicas is otherwise armed by its first tombstone, for the
    /// collection of its own: `Node::collect_own_tombstones`).
    pub fn new(now: Millis, anti_entropy: bool) -> Timers {
        let mut t = Timers {
            at: [None; Timer::COUNT],
        };
        for timer in [Timer::Stabilize, Timer::CheckPredecessor, Timer::FixFingers] {
            t.set(timer, now);
        }
        if anti_entropy {
            t.set(Timer::AntiEntropy, now);
        }
        t
    }

    pub fn set(&mut self, timer: Timer, at: Millis) {
        self.at[timer.index()] = Some(at);
    }

    /// Arms `timer` for `at` if it is not armed yet.
    pub fn arm(&mut self, timer: Timer, at: Millis) {
        self.at[timer.index()].get_or_insert(at);
    }

    /// Arms `timer` for `at` only if it is armed (a round the node runs at all).
    pub fn bring_forward(&mut self, timer: Timer, at: Millis) {
        if let Some(t) = &mut self.at[timer.index()] {
            *t = (*t).min(at);
        }
    }

    pub fn stop(&mut self, timer: Timer) {
        self.at[timer.index()] = None;
    }

    pub fn get(&self, timer: Timer) -> Option<Millis> {
        self.at[timer.index()]
    }

    /// Whether `timer` is armed for `now` or earlier.
    pub fn is_due(&self, timer: Timer, now: Millis) -> bool {
        self.get(timer).is_some_and(|t| t <= now)
    }

    /// The earliest armed timer's time.
    pub fn next(&self) -> Option<Millis> {
        self.at.iter().flatten().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_reports_its_earliest_armed_timer() {
        let mut t = Timers::new(100, false);
        assert_eq!(t.next(), Some(100));
        assert!(t.get(Timer::AntiEntropy).is_none());
        t.set(Timer::Stabilize, 300);
        t.set(Timer::CheckPredecessor, 250);
        t.set(Timer::FixFingers, 400);
        assert_eq!(t.next(), Some(250));
        assert!(t.is_due(Timer::CheckPredecessor, 250));
        assert!(!t.is_due(Timer::Stabilize, 250));
        t.bring_forward(Timer::AntiEntropy, 10);
        assert!(t.get(Timer::AntiEntropy).is_none(), "an unarmed round stays off");
        t.set(Timer::JoinRetry, 200);
        assert_eq!(t.next(), Some(200));
        t.stop(Timer::JoinRetry);
        assert_eq!(t.next(), Some(250));
    }
}
