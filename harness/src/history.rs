//! A history checker in the spirit of Jepsen's: every client operation is recorded with the
//! time it was invoked and the time it completed (or, for a write that failed or timed out,
//! the time after which it can no longer take effect), and the reads are judged against the
//! writes by real-time order alone, without trusting the versions the store reports.
//!
//! Every written value names the one write that produced it (loadgen's values carry a write
//! id, the simulator's are unique strings), so a read is "read X" or "read nothing". A write
//! `Y` *supersedes* a write `X` when `Y` was invoked after `X` could last have taken effect
//! (its acknowledgement, or for a failed write the moment the system promised it would never
//! apply it). A read that began after an acknowledged `Y` completed must not return anything
//! `Y` supersedes:
//!
//! ```text
//!   X: |----acked----|                           a read of X here is stale:
//!   Y:                  |----acked----|          Y began after X ended, and was acknowledged
//!   R:                                   |--R--| before R began
//! ```
//!
//! | read returns        | superseded by an acknowledged ... | verdict                       |
//! |---------------------|-----------------------------------|-------------------------------|
//! | the value of X      | put                               | stale read (final read: lost) |
//! | the value of X      | delete                            | resurrected                   |
//! | nothing             | put (no delete explains it)       | stale read (final read: lost) |
//! | a value never written, or one written after the read ended | | unexpected          |
//!
//! "Nothing" is explained by the initial state or by any delete invoked before the read
//! ended; it is stale only when an acknowledged put supersedes every such explanation. Reads
//! that failed are not judged (the partition policy decides which reads are served). The
//! check is O(log n) per read: per key, the acknowledged writes sorted by completion time
//! with a running maximum of their invocation times.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;

/// A point on the checker's clock: any monotonic unit (simulated milliseconds, microseconds
/// since the run started), the same for every operation of one history.
pub type Time = u64;

/// One write: a put of the value whose id is `id`, or a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Write {
    id: u64,
    delete: bool,
    invoke: Time,
    /// When it was acknowledged, or (unacknowledged) the last moment it could take effect.
    end: Time,
    acked: bool,
}

#[derive(Clone, Debug)]
struct Read<K> {
    key: K,
    invoke: Time,
    complete: Time,
    /// The id of the write whose value was read, or `None` for "not found".
    found: Option<u64>,
    /// The read at the end of a run, after every fault healed (judged as lost, not stale).
    last: bool,
}

/// The verdicts over a history. `examples` describes a few of the anomalies found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Reads judged (successful reads, final reads included).
    pub reads_checked: u64,
    /// Reads during the run that missed an acknowledged write that completed before they began.
    pub stale_reads: u64,
    /// Reads (during the run or final) that returned a value an acknowledged delete removed.
    pub resurrected: u64,
    /// Final reads that missed an acknowledged put: acknowledged writes lost.
    pub lost: u64,
    /// Reads that returned a value no write of that key produced, or one written later.
    pub unexpected: u64,
    pub examples: Vec<String>,
}

impl Report {
    /// Whether no anomaly was found.
    pub fn is_clean(&self) -> bool {
        self.stale_reads == 0 && self.resurrected == 0 && self.lost == 0 && self.unexpected == 0
    }
}

/// Most anomalies described in a [`Report`].
const MAX_EXAMPLES: usize = 10;

/// What is wrong with one read: the counter of [`Report`] it goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anomaly {
    /// [`Report::stale_reads`].
    StaleRead,
    /// [`Report::resurrected`].
    Resurrected,
    /// [`Report::lost`] (a final read).
    Lost,
    /// [`Report::unexpected`].
    Unexpected,
}

/// A recorded history of writes and reads over keys of type `K`.
#[derive(Clone, Debug)]
pub struct History<K> {
    writes: HashMap<K, Vec<Write>>,
    reads: Vec<Read<K>>,
}

impl<K> Default for History<K> {
    fn default() -> Self {
        History {
            writes: HashMap::new(),
            reads: Vec::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Debug> History<K> {
    pub fn new() -> History<K> {
        History::default()
    }

    /// Records a write of `key`: a put of the value that names `id` (ids are unique within a
    /// key), or a delete. `end` is the acknowledgement time when `acked`, otherwise the last
    /// moment it may take effect (the client's deadline, or [`Time::MAX`] when unknown).
    pub fn write(&mut self, key: K, id: u64, delete: bool, invoke: Time, end: Time, acked: bool) {
        self.writes.entry(key).or_default().push(Write {
            id,
            delete,
            invoke,
            end: end.max(invoke),
            acked,
        });
    }

    /// Judges the acknowledged write `id` of `key` as one that may or may not have taken
    /// effect (the faults destroyed every copy of it). Returns whether it was acknowledged.
    pub fn unacknowledge(&mut self, key: &K, id: u64) -> bool {
        let Some(w) = self
            .writes
            .get_mut(key)
            .and_then(|ws| ws.iter_mut().find(|w| w.id == id))
        else {
            return false;
        };
        std::mem::replace(&mut w.acked, false)
    }

    /// Records a successful read of `key` that returned the value of write `found` (`None`:
    /// not found).
    pub fn read(&mut self, key: K, invoke: Time, complete: Time, found: Option<u64>) {
        self.reads.push(Read {
            key,
            invoke,
            complete: complete.max(invoke),
            found,
            last: false,
        });
    }

    /// Records the read of `key` made after the run, once every fault has healed: a miss
    /// there is a lost write rather than a stale read.
    pub fn final_read(&mut self, key: K, found: Option<u64>) {
        self.reads.push(Read {
            key,
            invoke: Time::MAX,
            complete: Time::MAX,
            found,
            last: true,
        });
    }

    /// Judges every read.
    pub fn check(&self) -> Report {
        self.check_each(|_, _, _| {})
    }

    /// [`History::check`], also telling `each` about every read it finds wrong: its key,
    /// whether it is the final read, and what is wrong. A caller that judges final reads in
    /// another way too (loadgen, by version) can so count each key once.
    pub fn check_each(&self, mut each: impl FnMut(&K, bool, Anomaly)) -> Report {
        let index: HashMap<&K, KeyIndex> = self.writes.iter().map(|(k, w)| (k, KeyIndex::new(w))).collect();
        let empty = KeyIndex::new(&[]);
        let mut report = Report::default();
        for r in &self.reads {
            report.reads_checked += 1;
            let ix = index.get(&r.key).unwrap_or(&empty);
            let verdict = judge(ix, r);
            let anomaly = match verdict {
                Verdict::Ok => continue,
                Verdict::Unexpected => Anomaly::Unexpected,
                Verdict::SupersededByDelete => Anomaly::Resurrected,
                Verdict::SupersededByPut if r.last => Anomaly::Lost,
                Verdict::SupersededByPut => Anomaly::StaleRead,
            };
            *match anomaly {
                Anomaly::StaleRead => &mut report.stale_reads,
                Anomaly::Resurrected => &mut report.resurrected,
                Anomaly::Lost => &mut report.lost,
                Anomaly::Unexpected => &mut report.unexpected,
            } += 1;
            each(&r.key, r.last, anomaly);
            if report.examples.len() < MAX_EXAMPLES {
                let when = if r.last {
                    "final read".to_string()
                } else {
                    format!("read [{}, {}]", r.invoke, r.complete)
                };
                let got = match r.found.and_then(|id| ix.by_id.get(&id)) {
                    Some(w) => format!("write {} [{}, {}]", w.id, w.invoke, w.end),
                    None => match r.found {
                        Some(id) => format!("unknown write {id}"),
                        None => "nothing".to_string(),
                    },
                };
                report
                    .examples
                    .push(format!("{:?}: {when} returned {got}: {verdict:?}", r.key));
            }
        }
        report
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Ok,
    Unexpected,
    SupersededByPut,
    SupersededByDelete,
}

/// One key's writes, arranged for the check.
struct KeyIndex {
    by_id: HashMap<u64, Write>,
    /// Acknowledged writes sorted by `end`, with the running maximum of the invocation times
    /// of the puts and of the deletes among them (`None` until one is seen).
    acked_ends: Vec<Time>,
    max_put_invoke: Vec<Option<Time>>,
    max_delete_invoke: Vec<Option<Time>>,
    /// Deletes sorted by invocation time, with the running maximum of their `end`.
    delete_invokes: Vec<Time>,
    delete_max_end: Vec<Time>,
}

impl KeyIndex {
    fn new(writes: &[Write]) -> KeyIndex {
        let mut acked: Vec<&Write> = writes.iter().filter(|w| w.acked).collect();
        acked.sort_by_key(|w| w.end);
        let (mut put, mut del) = (None::<Time>, None::<Time>);
        let mut max_put_invoke = Vec::with_capacity(acked.len());
        let mut max_delete_invoke = Vec::with_capacity(acked.len());
        for w in &acked {
            let slot = if w.delete { &mut del } else { &mut put };
            *slot = Some(slot.map_or(w.invoke, |m| m.max(w.invoke)));
            max_put_invoke.push(put);
            max_delete_invoke.push(del);
        }
        let mut deletes: Vec<&Write> = writes.iter().filter(|w| w.delete).collect();
        deletes.sort_by_key(|w| w.invoke);
        let mut running = 0;
        let delete_max_end = deletes
            .iter()
            .map(|w| {
                running = running.max(w.end);
                running
            })
            .collect();
        KeyIndex {
            by_id: writes.iter().map(|w| (w.id, *w)).collect(),
            acked_ends: acked.iter().map(|w| w.end).collect(),
            max_put_invoke,
            max_delete_invoke,
            delete_invokes: deletes.iter().map(|w| w.invoke).collect(),
            delete_max_end,
        }
    }

    /// The latest invocation of an acknowledged put and of an acknowledged delete among the
    /// writes acknowledged strictly before `t`.
    fn latest_acked_before(&self, t: Time) -> (Option<Time>, Option<Time>) {
        let n = self.acked_ends.partition_point(|&e| e < t);
        match n {
            0 => (None, None),
            n => (self.max_put_invoke[n - 1], self.max_delete_invoke[n - 1]),
        }
    }

    /// The latest `end` of a delete invoked strictly before `t` (one that may explain a miss).
    fn latest_delete_end_invoked_before(&self, t: Time) -> Option<Time> {
        let n = self.delete_invokes.partition_point(|&i| i < t);
        (n > 0).then(|| self.delete_max_end[n - 1])
    }
}

fn judge<K>(ix: &KeyIndex, r: &Read<K>) -> Verdict {
    let (put, del) = ix.latest_acked_before(r.invoke);
    match r.found {
        Some(id) => {
            let Some(x) = ix.by_id.get(&id).filter(|w| !w.delete && w.invoke <= r.complete) else {
                return Verdict::Unexpected;
            };
            if del.is_some_and(|d| d > x.end) {
                Verdict::SupersededByDelete
            } else if put.is_some_and(|p| p > x.end) {
                Verdict::SupersededByPut
            } else {
                Verdict::Ok
            }
        }
        None => {
            // Explained by the initial state (superseded by any acknowledged put) or by a
            // delete that may have taken effect before the read ended.
            let explained_until = ix.latest_delete_end_invoked_before(r.complete.saturating_add(1));
            match (put, explained_until) {
                (Some(p), Some(e)) if p > e => Verdict::SupersededByPut,
                (Some(_), None) => Verdict::SupersededByPut,
                _ => Verdict::Ok,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_of_the_latest_acknowledged_write_is_clean() {
        let mut h = History::new();
        h.write("k", 1, false, 0, 10, true);
        h.write("k", 2, false, 20, 30, true);
        h.read("k", 40, 45, Some(2));
        h.final_read("k", Some(2));
        assert!(h.check().is_clean(), "{:?}", h.check());
    }

    #[test]
    fn a_read_of_an_older_write_after_a_newer_one_was_acknowledged_is_stale() {
        let mut h = History::new();
        h.write("k", 1, false, 0, 10, true);
        h.write("k", 2, false, 20, 30, true);
        h.read("k", 40, 45, Some(1));
        let r = h.check();
        assert_eq!((r.stale_reads, r.lost), (1, 0), "{r:?}");
    }

    #[test]
    fn concurrent_writes_may_be_read_in_either_order() {
        let mut h = History::new();
        h.write("k", 1, false, 0, 30, true);
        h.write("k", 2, false, 10, 20, true); // overlaps write 1
        h.read("k", 40, 45, Some(1));
        h.read("k", 50, 55, Some(2));
        assert!(h.check().is_clean(), "{:?}", h.check());
    }

    #[test]
    fn a_read_during_the_write_may_return_either_value() {
        let mut h = History::new();
        h.write("k", 1, false, 0, 10, true);
        h.write("k", 2, false, 20, 30, true);
        h.read("k", 25, 26, Some(1));
        h.read("k", 27, 28, Some(2));
        assert!(h.check().is_clean(), "{:?}", h.check());
    }

    #[test]
    fn a_failed_write_that_reappears_after_a_later_acknowledged_one_is_stale() {
        let mut h = History::new();
        // Write 1 failed at 10: it may have taken effect, but not after 10.
        h.write("k", 1, false, 0, 10, false);
        h.write("k", 2, false, 20, 30, true);
        h.read("k", 40, 45, Some(1));
        h.final_read("k", Some(1));
        let r = h.check();
        assert_eq!((r.stale_reads, r.lost), (1, 1), "{r:?}");
        // ... but a write with no known end can take effect at any time.
        let mut h = History::new();
        h.write("k", 1, false, 0, Time::MAX, false);
        h.write("k", 2, false, 20, 30, true);
        h.final_read("k", Some(1));
        assert!(h.check().is_clean());
    }

    #[test]
    fn misses_are_stale_unless_a_delete_explains_them() {
        let mut h = History::new();
        h.write("k", 1, false, 0, 10, true);
        h.read("k", 20, 25, None);
        assert_eq!(h.check().stale_reads, 1);
        h.write("k", 2, true, 12, 18, true);
        assert!(h.check().is_clean(), "the delete explains the miss");
        h.write("k", 3, false, 30, 40, true);
        h.final_read("k", None);
        assert_eq!(h.check().lost, 1, "the put after the delete is lost");
        // A delete that failed may still explain a miss (it may have taken effect).
        let mut h = History::new();
        h.write("k", 1, false, 0, 10, true);
        h.write("k", 2, true, 20, 30, false);
        h.final_read("k", None);
        assert!(h.check().is_clean());
    }

    #[test]
    fn a_value_back_after_an_acknowledged_delete_is_resurrected() {
        let mut h = History::new();
        h.write("k", 1, false, 0, 10, true);
        h.write("k", 2, true, 20, 30, true);
        h.read("k", 40, 45, Some(1));
        h.final_read("k", Some(1));
        let r = h.check();
        assert_eq!((r.resurrected, r.stale_reads, r.lost), (2, 0, 0), "{r:?}");
    }

    #[test]
    fn values_never_written_or_written_after_the_read_are_unexpected() {
        let mut h = History::new();
        h.write("k", 1, false, 50, 60, true);
        h.read("k", 0, 10, Some(1));
        h.read("k", 0, 10, Some(9));
        h.read("j", 0, 10, Some(1));
        assert_eq!(h.check().unexpected, 3);
    }

    #[test]
    fn check_each_names_every_anomalous_read() {
        let mut h = History::new();
        h.write("k", 1, false, 0, 10, true);
        h.write("k", 2, false, 20, 30, true);
        h.read("k", 40, 45, Some(1));
        h.read("k", 46, 47, Some(2));
        h.final_read("k", Some(1));
        h.write("j", 3, false, 0, 10, true);
        h.write("j", 4, true, 20, 30, true);
        h.final_read("j", Some(3));
        let mut seen = Vec::new();
        let report = h.check_each(|k, last, a| seen.push((*k, last, a)));
        assert_eq!(report, h.check());
        seen.sort_by_key(|s| (s.0, s.1));
        assert_eq!(
            seen,
            vec![
                ("j", true, Anomaly::Resurrected),
                ("k", false, Anomaly::StaleRead),
                ("k", true, Anomaly::Lost)
            ]
        );
    }

    #[test]
    fn the_check_is_linear_enough_for_a_million_operations_on_one_key() {
        let mut h = History::new();
        for i in 0..500_000u64 {
            h.write(0u64, i, false, 10 * i, 10 * i + 5, true);
            h.read(0u64, 10 * i + 6, 10 * i + 7, Some(i));
        }
        let r = h.check();
        assert!(r.is_clean(), "{r:?}");
        assert_eq!(r.reads_checked, 500_000);
    }
}
