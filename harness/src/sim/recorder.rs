//! Client operations through the simulation, recorded for the history checker
//! ([`crate::history`]).
//!
//! Each operation is invoked at the true simulated time it is sent and completes when its
//! reply arrives; every put writes a value naming its write (`w<id>`), so a read tells which
//! write it saw. What a write's outcome means for the checker:
//!
//! | reply            | recorded as                                                      |
//! |------------------|------------------------------------------------------------------|
//! | `PutReply`, `DeleteReply` | acknowledged, ending at the reply                       |
//! | an error         | failed: it may have taken effect, but not after the error reply  |
//! | none (run over)  | failed, with no end: it may take effect at any time              |
//!
//! Reads that fail are not judged. After the run, [`Recorder::final_reads`] reads every key
//! once: a miss there is a lost write.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;

use bytes::Bytes;
use chordkv_protocol::Message;

use super::oracle::Fnv;
use super::Sim;
use crate::history::{History, Report, Time};
use chordkv_core::chord::Millis;

/// The id a read reports for a value that names no write of ours.
const UNKNOWN_WRITE: u64 = u64::MAX;

/// Most anomalies described in a merged [`Report`].
const MAX_EXAMPLES: usize = 10;

/// How long a final read may take before it is retried.
const FINAL_READ_TIMEOUT_MS: u64 = 15_000;
/// How often final reads are checked for replies.
const FINAL_READ_STEP_MS: u64 = 10;

/// What happened to the operations recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub puts: u64,
    pub puts_acked: u64,
    pub deletes: u64,
    pub deletes_acked: u64,
    /// Writes answered with an error.
    pub writes_failed: u64,
    /// Writes never answered by the end of the run.
    pub writes_unanswered: u64,
    pub gets: u64,
    pub gets_ok: u64,
    /// Final reads made, and those that failed every attempt (their keys are not judged).
    pub final_reads: u64,
    pub final_unavailable: u64,
    /// Acknowledged writes the faults destroyed (every copy wiped, [`Recorder::excuse_destroyed`]).
    pub writes_destroyed: u64,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Put(u64),
    Delete(u64),
    Get,
}

struct Pending {
    key: Bytes,
    op: Op,
    via: usize,
    invoke: Millis,
}

/// Records client operations sent through a [`Sim`] into a [`History`].
pub struct Recorder {
    /// One history per key: keys are independent, and a failure report wants the keys
    /// with each kind of anomaly.
    histories: BTreeMap<Bytes, History<Bytes>>,
    pending: BTreeMap<u64, Pending>,
    next_write: u64,
    keys: BTreeSet<Bytes>,
    counts: Counts,
    /// Keys whose final read failed.
    unavailable: Vec<Bytes>,
    digest: Fnv,
    /// Every operation's outcome, one line each, per key (see [`Recorder::describe`]).
    log: BTreeMap<Bytes, Vec<String>>,
    /// Acknowledged writes by key and version.
    acked: BTreeMap<(Bytes, u64), u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// The value a put of write `id` stores.
pub fn value_of_write(id: u64) -> Bytes {
    Bytes::from(format!("w{id}"))
}

/// The write a value names ([`UNKNOWN_WRITE`] when it names none).
fn write_of_value(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.strip_prefix('w'))
        .and_then(|id| id.parse().ok())
        .unwrap_or(UNKNOWN_WRITE)
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            histories: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_write: 1,
            keys: BTreeSet::new(),
            counts: Counts::default(),
            unavailable: Vec::new(),
            digest: Fnv::default(),
            log: BTreeMap::new(),
            acked: BTreeMap::new(),
        }
    }

    /// Sends a put of a fresh value of `key` through node `via`.
    pub fn put(&mut self, sim: &mut Sim, via: usize, key: &[u8]) -> u64 {
        let id = self.next_write;
        self.next_write += 1;
        self.counts.puts += 1;
        let key = Bytes::copy_from_slice(key);
        let message = Message::Put {
            key: key.clone(),
            value: value_of_write(id),
        };
        self.send(sim, via, key, Op::Put(id), message)
    }

    /// Sends a delete of `key` through node `via`.
    pub fn delete(&mut self, sim: &mut Sim, via: usize, key: &[u8]) -> u64 {
        let id = self.next_write;
        self.next_write += 1;
        self.counts.deletes += 1;
        let key = Bytes::copy_from_slice(key);
        let message = Message::Delete { key: key.clone() };
        self.send(sim, via, key, Op::Delete(id), message)
    }

    /// Sends a get of `key` through node `via`.
    pub fn get(&mut self, sim: &mut Sim, via: usize, key: &[u8]) -> u64 {
        self.counts.gets += 1;
        let key = Bytes::copy_from_slice(key);
        let message = Message::Get { key: key.clone() };
        self.send(sim, via, key, Op::Get, message)
    }

    fn send(&mut self, sim: &mut Sim, via: usize, key: Bytes, op: Op, message: Message) -> u64 {
        self.keys.insert(key.clone());
        let handle = sim.client_request(via, message);
        let invoke = sim.now();
        self.pending.insert(handle, Pending { key, op, via, invoke });
        handle
    }

    /// Operations sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Collects the replies that have arrived.
    pub fn poll(&mut self, sim: &mut Sim) {
        let handles: Vec<u64> = self.pending.keys().copied().collect();
        for handle in handles {
            if let Some((at, reply)) = sim.reply_at(handle) {
                if let Some(p) = self.pending.remove(&handle) {
                    self.complete(handle, p, at, reply);
                }
            }
        }
    }

    fn complete(&mut self, handle: u64, p: Pending, at: Millis, reply: Message) {
        self.digest.write_u64(handle);
        self.digest.write_u64(at);
        self.digest.write(format!("{reply:?}").as_bytes());
        let line = format!(
            "{} via n{} [{}, {at}] -> {}",
            describe_op(p.op),
            p.via,
            p.invoke,
            describe_reply(&reply)
        );
        self.log.entry(p.key.clone()).or_default().push(line);
        match (p.op, reply) {
            (Op::Put(id), Message::PutReply { version, .. }) => {
                self.counts.puts_acked += 1;
                self.acked.insert((p.key.clone(), version), id);
                self.history_of(&p.key)
                    .write(p.key.clone(), id, false, p.invoke, at, true);
            }
            (Op::Delete(id), Message::DeleteReply { version, .. }) => {
                self.counts.deletes_acked += 1;
                self.acked.insert((p.key.clone(), version), id);
                self.history_of(&p.key)
                    .write(p.key.clone(), id, true, p.invoke, at, true);
            }
            (Op::Put(id), _) => {
                self.counts.writes_failed += 1;
                self.history_of(&p.key)
                    .write(p.key.clone(), id, false, p.invoke, at, false);
            }
            (Op::Delete(id), _) => {
                self.counts.writes_failed += 1;
                self.history_of(&p.key)
                    .write(p.key.clone(), id, true, p.invoke, at, false);
            }
            (Op::Get, Message::GetReply { value, .. }) => {
                self.counts.gets_ok += 1;
                let found = value.as_deref().map(write_of_value);
                self.history_of(&p.key).read(p.key.clone(), p.invoke, at, found);
            }
            (Op::Get, _) => {}
        }
    }

    /// Reads every key an operation touched, once, through the live nodes in turn (call it
    /// after every fault has healed). The reads go out together; those that fail are sent
    /// again through the next node `retry_ms` later, up to `attempts` rounds; a key whose
    /// reads all fail is counted in `final_unavailable` and not judged.
    pub fn final_reads(&mut self, sim: &mut Sim, attempts: u32, retry_ms: u64) {
        let alive = sim.alive();
        let keys: Vec<Bytes> = self.keys.iter().cloned().collect();
        let mut found: BTreeMap<usize, Option<u64>> = BTreeMap::new();
        let mut failures: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for attempt in 0..attempts.max(1) as usize {
            let mut waiting: Vec<(u64, usize, usize)> = (0..keys.len())
                .filter(|k| !found.contains_key(k))
                .map(|k| {
                    let via = alive[(k + attempt) % alive.len()];
                    let get = Message::Get { key: keys[k].clone() };
                    (sim.client_request(via, get), k, via)
                })
                .collect();
            if waiting.is_empty() {
                break;
            }
            let deadline = sim.now() + FINAL_READ_TIMEOUT_MS;
            while !waiting.is_empty() && sim.now() < deadline {
                sim.run_until((sim.now() + FINAL_READ_STEP_MS).min(deadline));
                waiting.retain(|&(handle, k, via)| match sim.reply_at(handle) {
                    Some((_, Message::GetReply { value, .. })) => {
                        found.insert(k, value.as_deref().map(write_of_value));
                        false
                    }
                    Some((_, other)) => {
                        failures
                            .entry(k)
                            .or_default()
                            .push(format!("via n{via}: {}", describe_reply(&other)));
                        false
                    }
                    None => true,
                });
            }
            for (_, k, via) in waiting {
                failures
                    .entry(k)
                    .or_default()
                    .push(format!("via n{via}: no reply"));
            }
            if found.len() < keys.len() {
                sim.run_for(retry_ms);
            }
        }
        for (k, key) in keys.into_iter().enumerate() {
            self.counts.final_reads += 1;
            let line = match found.get(&k) {
                Some(Some(id)) => format!("final read -> w{id}"),
                Some(None) => "final read -> nothing".to_string(),
                None => format!("final read -> unavailable ({})", failures[&k].join("; ")),
            };
            self.digest.write(line.as_bytes());
            self.log.entry(key.clone()).or_default().push(line);
            match found.get(&k) {
                Some(&found) => self.history_of(&key).final_read(key.clone(), found),
                None => {
                    self.counts.final_unavailable += 1;
                    self.unavailable.push(key);
                }
            }
        }
        self.poll(sim);
    }

    /// Ends the recording: writes still unanswered may take effect at any time.
    pub fn finish(&mut self) {
        for (_, p) in std::mem::take(&mut self.pending) {
            let line = format!(
                "{} via n{} [{}, -] unanswered",
                describe_op(p.op),
                p.via,
                p.invoke
            );
            self.log.entry(p.key.clone()).or_default().push(line);
            match p.op {
                Op::Put(id) | Op::Delete(id) => {
                    self.counts.writes_unanswered += 1;
                    let delete = matches!(p.op, Op::Delete(_));
                    self.history_of(&p.key)
                        .write(p.key.clone(), id, delete, p.invoke, Time::MAX, false);
                }
                Op::Get => {}
            }
        }
    }

    /// Judges the acknowledged writes among `destroyed` (`(key, version)`, from
    /// [`crate::sim::Sim::destroyed_writes`]) as writes that may or may not have taken effect:
    /// the faults wiped every copy of them, beyond what replication survives. Counted in
    /// `writes_destroyed`, and noted in the key's history.
    pub fn excuse_destroyed(&mut self, destroyed: &[(Bytes, u64)]) {
        for (key, version) in destroyed {
            let Some(&id) = self.acked.get(&(key.clone(), *version)) else {
                continue;
            };
            if self.history_of(key).unacknowledge(key, id) {
                self.counts.writes_destroyed += 1;
                let line = format!("write {id} (v{version:x}): every copy wiped by the faults");
                self.log.entry(key.clone()).or_default().push(line);
            }
        }
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Keys whose final read failed every attempt.
    pub fn unavailable(&self) -> &[Bytes] {
        &self.unavailable
    }

    fn history_of(&mut self, key: &Bytes) -> &mut History<Bytes> {
        self.histories.entry(key.clone()).or_default()
    }

    /// Judges the history recorded so far (call [`Recorder::finish`] first): every key's
    /// verdicts added up, and the first examples in key order.
    pub fn check(&self) -> Report {
        let mut total = Report::default();
        for (_, r) in self.check_by_key() {
            total.reads_checked += r.reads_checked;
            total.stale_reads += r.stale_reads;
            total.resurrected += r.resurrected;
            total.lost += r.lost;
            total.unexpected += r.unexpected;
            let room = MAX_EXAMPLES.saturating_sub(total.examples.len());
            total.examples.extend(r.examples.into_iter().take(room));
        }
        total
    }

    /// Every key's verdicts, in key order.
    pub fn check_by_key(&self) -> Vec<(Bytes, Report)> {
        self.histories
            .iter()
            .map(|(k, h)| (k.clone(), h.check()))
            .collect()
    }

    /// Every operation on `key` and its outcome, in the order the outcomes were collected:
    /// what to read next to a history anomaly.
    pub fn describe(&self, key: &[u8]) -> &[String] {
        self.log.get(key).map_or(&[], Vec::as_slice)
    }

    /// A digest of every reply in the order it was collected, with its time: equal digests
    /// mean the clients saw the same run.
    pub fn digest(&self) -> u64 {
        self.digest.finish()
    }
}

fn describe_op(op: Op) -> String {
    match op {
        Op::Put(id) => format!("put w{id}"),
        Op::Delete(id) => format!("delete #{id}"),
        Op::Get => "get".to_string(),
    }
}

fn describe_reply(reply: &Message) -> String {
    match reply {
        Message::PutReply { version, .. } => format!("ok v{version:x}"),
        Message::DeleteReply { version, existed, .. } => format!("ok v{version:x} existed={existed}"),
        Message::GetReply { version, value, .. } => match value {
            Some(v) => format!("{} v{version:x}", String::from_utf8_lossy(v)),
            None => format!("nothing v{version:x}"),
        },
        Message::Error { code, text, .. } => format!("error {code:?}: {text}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_name_their_writes() {
        assert_eq!(write_of_value(&value_of_write(17)), 17);
        assert_eq!(write_of_value(b"w"), UNKNOWN_WRITE);
        assert_eq!(write_of_value(b"x17"), UNKNOWN_WRITE);
        assert_eq!(write_of_value(b"w18446744073709551616"), UNKNOWN_WRITE);
    }
}
