//! Scenario tests a reviewer reads as text (issue 12): scripts over the simulator, in
//! `tests/scenarios/*.txt`, each a list of steps followed by what they printed (the ring, where
//! the keys live, the clients' replies), checked with the `goldenscript` crate as toydb's Raft
//! tests are. Each script opens with a comment saying what it shows and where the behaviour
//! comes from (a section of the Chord paper, a case of issue 11, a rule of
//! `docs/architecture.md`). A block of commands ends in `---`, then its output:
//!
//! ```text
//! join via=n2
//! stabilize
//! ring
//! keys
//! ---
//! n3 9e121eed joins via n2
//! converged
//! n1 4b2a3856 Active pred n3 succ n2 n3
//! n2 866a9598 Active pred n1 succ n3 n1
//! n3 9e121eed Active pred n2 succ n1 n2
//! a 86f7e437 primary n3; held n3=1
//! b e9d71f5e primary n1; held n1=2
//! ```
//!
//! A test fails with a diff when the output differs from the file. After a change of
//! behaviour, regenerate the files, then read the diff before committing it:
//!
//! ```text
//! UPDATE_GOLDENFILES=1 cargo test -p chordkv-harness --test scenarios
//! ```
//!
//! # The commands
//!
//! Nodes are named `n1`, `n2`, ... in the order they were added, and listed in id order (ids
//! shown as their first 8 hex digits). Durations are `250ms` or `5s`. Every run is seeded
//! (`start` prints the seed): the same script prints the same text.
//!
//! | command                                   | does                                                    |
//! |-------------------------------------------|---------------------------------------------------------|
//! | `start N [KEY=VALUE...]`                  | a ring of N nodes, joining one by one through n1 (options below) |
//! | `join [via=nX]`                           | a new node joins through `nX` (default n1)              |
//! | `run DURATION`                            | advances simulated time                                 |
//! | `stabilize [max=DURATION]`                | runs until the exact ring oracle holds (default 60s)    |
//! | `ring`                                    | every node: phase, predecessor, successor list          |
//! | `keys [KEY...]`                           | each key's primary and replicas among the ring's members, and every store holding it |
//! | `fingers [nX...]`                         | finger tables as runs of fingers, and how many are wrong |
//! | `check`                                   | the exact ring oracle and Zave's invariants             |
//! | `clocks`                                  | each node's clock offset and drift                      |
//! | `stats nX COUNTER...`                     | counters of a node (`Stats`: `late_requests_refused`, ...) |
//! | `put KEY VALUE [via=nX] [async]`          | a client write through `nX` (default: the first live node) |
//! | `get KEY [via=nX]`                        | a client read: the value and the hops it took           |
//! | `del KEY [via=nX] [async]`                | a client delete                                         |
//! | `crash nX`                                | the node halts; its store is kept aside                 |
//! | `restart nX [via=nY] [keep-store]`        | a new process on the same address, joining through `nY` |
//! | `leave nX`                                | a graceful leave: it hands its keys over, then exits    |
//! | `pause nX`, `resume nX`                   | the node freezes, its inputs queue; then handles them   |
//! | `partition nX... [hold]`                  | cuts the named nodes from all others (hold: messages wait for the heal) |
//! | `heal`                                    | restores every link; held messages are delivered        |
//!
//! `start` options: `seed=` (1), `replicas=` (2), `policy=` (`consistent` or `available`),
//! `ack=` (`all` or `one`), `successors=` (8), `stabilize=` (100ms; the other periods and
//! timeouts scale with it), `grace=` (the tombstone grace, 60s), `skew=true` (clock offsets
//! within the bound). Messages take 1 to 10 ms.
//!
//! A client operation waits for its reply (30 s at most), unless `async`: then it prints a
//! handle (`#1`), and its reply is printed after whichever later command it arrived during.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::fmt::Write as _;

use bytes::Bytes;
use chordkv_core::chord::config::{AckPolicy, PartitionPolicy};
use chordkv_core::chord::{Config, Phase};
use chordkv_harness::sim::{sim_addr, Sim, SimConfig};
use chordkv_protocol::{Id, Message};
use goldenscript::{Argument, Command};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// How long a synchronous client operation waits for its reply.
const CLIENT_WAIT_MS: u64 = 30_000;
/// How long `stabilize` waits for the ring by default.
const STABILIZE_MAX_MS: u64 = 60_000;
/// Digits of an id shown.
const ID_DIGITS: usize = 8;

/// One script's state: the simulation and what the script has done to it.
#[derive(Default)]
struct Scenario {
    sim: Option<Sim>,
    /// Every key the script wrote or deleted: what `keys` shows.
    keys: BTreeSet<String>,
    /// Client operations sent with `async` whose reply has not arrived: handle, label.
    pending: BTreeMap<u64, String>,
    next_async: u64,
}

fn name(i: usize) -> String {
    format!("n{}", i + 1)
}

fn short(id: &Id) -> String {
    id.short(ID_DIGITS)
}

fn parse_ms(text: &str) -> Result<u64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000)
    } else {
        return Err(format!("duration '{text}' needs a unit: ms or s").into());
    };
    Ok(number.parse::<u64>()? * scale)
}

fn parse_ms_or(arg: Option<&Argument>, default: u64) -> Result<u64> {
    arg.map_or(Ok(default), |a| parse_ms(&a.value))
}

/// Splits positional arguments from the bare-word flags a command allows (`async`, `hold`).
fn flags<'a>(args: Vec<&'a Argument>, allowed: &[&str]) -> (Vec<&'a Argument>, BTreeSet<String>) {
    let (flags, rest): (Vec<&Argument>, Vec<&Argument>) = args
        .into_iter()
        .partition(|a| allowed.contains(&a.value.as_str()));
    (rest, flags.into_iter().map(|a| a.value.clone()).collect())
}

impl Scenario {
    fn sim(&mut self) -> Result<&mut Sim> {
        self.sim
            .as_mut()
            .ok_or_else(|| "no simulation: `start` first".into())
    }

    fn node(&self, text: &str) -> Result<usize> {
        let s = self.sim.as_ref().ok_or("no simulation: `start` first")?;
        let i = text
            .strip_prefix('n')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n >= 1 && n <= s.len())
            .ok_or_else(|| format!("no node '{text}' (n1..n{})", s.len()))?;
        Ok(i - 1)
    }

    /// The node named by `via=`, else the first live one.
    fn via(&mut self, arg: Option<&Argument>) -> Result<usize> {
        match arg {
            Some(a) => self.node(&a.value),
            None => self
                .sim()?
                .alive()
                .first()
                .copied()
                .ok_or_else(|| "no live node".into()),
        }
    }

    /// Replaces simulated addresses in a text (an error, an oracle's finding) by node names.
    fn names(&self, text: &str) -> String {
        let Some(s) = &self.sim else {
            return text.to_string();
        };
        (0..s.len()).rev().fold(text.to_string(), |t, i| {
            t.replace(&sim_addr(i).to_string(), &name(i))
        })
    }

    fn reply_text(&self, reply: Option<Message>) -> String {
        match reply {
            None => "no reply".to_string(),
            Some(Message::PutReply { .. }) => "ok".to_string(),
            Some(Message::DeleteReply { existed, .. }) => {
                format!("ok ({})", if existed { "existed" } else { "absent" })
            }
            Some(Message::GetReply { value, hops, .. }) => {
                let value = value.map_or("not found".to_string(), |v| {
                    String::from_utf8_lossy(&v).into_owned()
                });
                let hops = if hops == 1 {
                    "1 hop".to_string()
                } else {
                    format!("{hops} hops")
                };
                format!("{value} ({hops})")
            }
            Some(Message::Error { code, text, .. }) => format!("error {code:?}: {}", self.names(&text)),
            Some(other) => format!("unexpected reply {other:?}"),
        }
    }

    /// Replies to `async` operations that have arrived, one line each.
    fn arrived(&mut self) -> String {
        let mut out = String::new();
        let Some(s) = self.sim.as_mut() else { return out };
        let mut got = Vec::new();
        for (&h, label) in &self.pending {
            if let Some(reply) = s.reply(h) {
                got.push((h, label.clone(), reply));
            }
        }
        for (h, label, reply) in got {
            self.pending.remove(&h);
            let text = self.reply_text(Some(reply));
            writeln!(out, "{label} → {text}").unwrap();
        }
        out
    }

    fn start(&mut self, cmd: &Command) -> Result<String> {
        let mut args = cmd.consume_args();
        let n: usize = args.next_pos().ok_or("start N: the number of nodes")?.parse()?;
        let seed: u64 = args.lookup_parse("seed")?.unwrap_or(1);
        let stabilize_ms = parse_ms_or(args.lookup("stabilize"), 100)?;
        let mut chord = Config::with_stabilize_interval_ms(stabilize_ms);
        chord.replicas = args.lookup_parse("replicas")?.unwrap_or(chord.replicas);
        chord.successors = args.lookup_parse("successors")?.unwrap_or(chord.successors);
        if let Some(p) = args.lookup_parse::<PartitionPolicy>("policy")? {
            chord.partition_policy = p;
        }
        if let Some(a) = args.lookup_parse::<AckPolicy>("ack")? {
            chord.ack = a;
        }
        chord.tombstone_grace_ms = parse_ms_or(args.lookup("grace"), chord.tombstone_grace_ms)?;
        let skew: bool = args.lookup_parse("skew")?.unwrap_or(false);
        args.reject_rest()?;
        let mut out = format!(
            "seed {seed}: {n} node{}, replicas {}, {}, ack {}, stabilize {stabilize_ms}ms",
            if n == 1 { "" } else { "s" },
            chord.replicas,
            chord.partition_policy,
            format!("{:?}", chord.ack).to_lowercase()
        );
        if chord.successors != Config::default().successors {
            write!(out, ", successors {}", chord.successors)?;
        }
        if chord.tombstone_grace_ms != Config::default().tombstone_grace_ms {
            write!(out, ", tombstone grace {}ms", chord.tombstone_grace_ms)?;
        }
        if skew {
            write!(out, ", clock skew up to {}ms", chord.max_clock_offset_ms)?;
        }
        out.push('\n');
        let mut s = Sim::new(SimConfig {
            seed,
            min_delay_ms: 1,
            max_delay_ms: 10,
            clock_skew: skew,
            chord,
            trace_key: None,
            ..SimConfig::default()
        });
        let first = s.add_first();
        for _ in 1..n {
            s.add_joining(first);
            s.run_for(2 * stabilize_ms);
        }
        self.sim = Some(s);
        Ok(out)
    }

    fn ring(&self) -> String {
        let s = self.sim.as_ref().expect("started");
        let mut order: Vec<usize> = (0..s.len()).collect();
        order.sort_by_key(|&i| s.node(i).me().id);
        let peer = |addr| s.index_of(&addr).map_or("?".to_string(), name);
        let mut out = String::new();
        for i in order {
            let node = s.node(i);
            let id = short(&node.me().id);
            if !s.is_alive(i) {
                let how = if node.is_left() { "left" } else { "crashed" };
                writeln!(out, "{} {id} {how}", name(i)).unwrap();
                continue;
            }
            let pred = node.predecessor().map_or("-".to_string(), |p| peer(p.addr));
            let succ: Vec<String> = node.successors().iter().map(|p| peer(p.addr)).collect();
            let succ = if succ.is_empty() {
                "-".to_string()
            } else {
                succ.join(" ")
            };
            let mut line = format!("{} {id} {:?} pred {pred} succ {succ}", name(i), node.phase());
            if node.phase() == Phase::Active && !node.is_settled() {
                line += " (transferring)";
            }
            if s.is_paused(i) {
                line += " (paused)";
            }
            writeln!(out, "{line}").unwrap();
        }
        out
    }

    /// The nodes a key's copies belong to, in id order: the live ring nodes and, under
    /// `consistent`, the crashed ones, which stay members until they return (a node that left
    /// is gone under either policy).
    fn members(&self) -> Vec<usize> {
        let s = self.sim.as_ref().expect("started");
        let consistent = s.config().chord.is_consistent();
        let mut members: Vec<usize> = (0..s.len())
            .filter(|&i| s.node(i).in_ring() && (s.is_alive(i) || consistent))
            .collect();
        members.sort_by_key(|&i| s.node(i).me().id);
        members
    }

    fn keys(&self, only: &[&Argument]) -> String {
        let s = self.sim.as_ref().expect("started");
        let replicas = s.config().chord.replicas;
        let members = self.members();
        let member = |i: usize| {
            let down = if s.is_alive(i) { "" } else { " (crashed)" };
            format!("{}{down}", name(i))
        };
        let keys: Vec<String> = if only.is_empty() {
            self.keys.iter().cloned().collect()
        } else {
            only.iter().map(|a| a.value.clone()).collect()
        };
        let mut out = String::new();
        for key in keys {
            let id = Id::of_key(key.as_bytes());
            // The key's preference list: its primary (the first member at or after its id),
            // then the next `replicas` members.
            let first = members.partition_point(|&i| s.node(i).me().id < id);
            let prefs: Vec<usize> = (0..members.len().min(replicas + 1))
                .map(|d| members[(first + d) % members.len()])
                .collect();
            let mut line = format!("{key} {}", short(&id));
            if let Some((&primary, rest)) = prefs.split_first() {
                write!(line, " primary {}", member(primary)).unwrap();
                if !rest.is_empty() {
                    let rest: Vec<String> = rest.iter().map(|&i| member(i)).collect();
                    write!(line, ", replicas {}", rest.join(" ")).unwrap();
                }
                line.push(';');
            }
            let held: Vec<String> = (0..s.len())
                .filter_map(|i| {
                    let (_, value) = s.entry(i, key.as_bytes())?;
                    let value = value.map_or("deleted".to_string(), |v| {
                        String::from_utf8_lossy(&v).into_owned()
                    });
                    let status = match (s.is_alive(i), s.node(i).is_left()) {
                        (true, _) => "",
                        (false, true) => " (left)",
                        (false, false) => " (crashed)",
                    };
                    Some(format!("{}={value}{status}", name(i)))
                })
                .collect();
            if held.is_empty() {
                line += " held nowhere";
            } else {
                write!(line, " held {}", held.join(" ")).unwrap();
            }
            writeln!(out, "{line}").unwrap();
        }
        out
    }

    fn fingers(&self, only: &[usize]) -> String {
        let s = self.sim.as_ref().expect("started");
        let nodes: Vec<usize> = if only.is_empty() { s.alive() } else { only.to_vec() };
        let mut out = String::new();
        for i in nodes {
            let table = s.node(i).routing();
            // Runs of consecutive fingers naming the same node.
            let mut runs: Vec<(usize, usize, String)> = Vec::new();
            for k in 0..table.finger_count() {
                let to = table.finger(k).map_or("-".to_string(), |f| {
                    s.index_of(&f.addr).map_or("?".to_string(), name)
                });
                match runs.last_mut() {
                    Some(last) if last.2 == to => last.1 = k,
                    _ => runs.push((k, k, to)),
                }
            }
            let runs: Vec<String> = runs
                .iter()
                .map(|(a, b, to)| {
                    if a == b {
                        format!("{a} {to}")
                    } else {
                        format!("{a}-{b} {to}")
                    }
                })
                .collect();
            writeln!(out, "{} fingers {}", name(i), runs.join(", ")).unwrap();
        }
        writeln!(out, "wrong fingers (all live nodes): {}", s.finger_errors()).unwrap();
        out
    }

    fn check(&self) -> String {
        let s = self.sim.as_ref().expect("started");
        let exact = s.ring_problem().map_or("ok".to_string(), |p| self.names(&p));
        let zave = s.zave_problem().map_or("ok".to_string(), |p| self.names(&p));
        format!("exact ring: {exact}\nzave invariants: {zave}\n")
    }

    fn clocks(&self) -> String {
        let s = self.sim.as_ref().expect("started");
        let mut out = String::new();
        for i in 0..s.len() {
            let c = s.clock(i);
            writeln!(
                out,
                "{} offset {:+}ms drift {:+}ppm",
                name(i),
                c.offset_ms,
                c.drift_ppm
            )
            .unwrap();
        }
        out
    }

    /// `stats nX COUNTER...`: the named counters of node `nX`.
    fn stats(&self, cmd: &Command) -> Result<String> {
        let mut args = cmd.consume_args();
        let who = self.node(&args.next_pos().ok_or("usage: stats nX COUNTER...")?.value)?;
        let wanted: Vec<String> = args.rest_pos().iter().map(|a| a.value.clone()).collect();
        args.reject_rest()?;
        let s = self.sim.as_ref().expect("started");
        let counters: BTreeMap<&str, u64> = s.node(who).stats().counters().collect();
        let mut out = name(who);
        for w in &wanted {
            let v = counters
                .get(w.as_str())
                .ok_or_else(|| format!("no counter '{w}'"))?;
            write!(out, " {w}={v}")?;
        }
        Ok(out + "\n")
    }

    /// `put`, `get` and `del`.
    fn client(&mut self, cmd: &Command) -> Result<String> {
        let mut args = cmd.consume_args();
        let via = self.via(args.lookup("via"))?;
        let (pos, flags) = flags(args.rest_pos(), &["async"]);
        args.reject_rest()?;
        let is_async = flags.contains("async");
        let key = pos.first().ok_or("the key is missing")?.value.clone();
        let (message, label) = match (cmd.name.as_str(), pos.len()) {
            ("put", 2) => {
                let value = pos[1].value.clone();
                let label = format!("{}: put {key}={value}", name(via));
                let message = Message::Put {
                    key: Bytes::from(key.clone()),
                    value: Bytes::from(value),
                };
                (message, label)
            }
            ("get", 1) if !is_async => {
                let label = format!("{}: get {key}", name(via));
                (
                    Message::Get {
                        key: Bytes::from(key.clone()),
                    },
                    label,
                )
            }
            ("del", 1) => {
                let label = format!("{}: del {key}", name(via));
                (
                    Message::Delete {
                        key: Bytes::from(key.clone()),
                    },
                    label,
                )
            }
            _ => return Err("usage: put KEY VALUE, get KEY, del KEY; [via=nX], [async] for writes".into()),
        };
        if cmd.name != "get" {
            self.keys.insert(key);
        }
        let s = self.sim()?;
        if is_async {
            let handle = s.client_request(via, message);
            self.next_async += 1;
            let label = format!("#{} {label}", self.next_async);
            self.pending.insert(handle, label.clone());
            return Ok(format!("{label} sent\n"));
        }
        let reply = s.request(via, message, CLIENT_WAIT_MS);
        Ok(format!("{label} → {}\n", self.reply_text(reply)))
    }

    /// `crash`, `restart`, `leave`, `pause`, `resume`.
    fn fault(&mut self, cmd: &Command) -> Result<String> {
        let mut args = cmd.consume_args();
        let via = args.lookup("via").map(|a| self.node(&a.value)).transpose()?;
        let (pos, flags) = flags(args.rest_pos(), &["keep-store"]);
        args.reject_rest()?;
        let [who] = pos[..] else {
            return Err(format!("usage: {} nX", cmd.name).into());
        };
        let i = self.node(&who.value)?;
        let s = self.sim()?;
        let out = match cmd.name.as_str() {
            "crash" => {
                s.crash(i);
                format!("{} crashed", name(i))
            }
            "restart" => {
                let via = match via {
                    Some(v) => v,
                    None => *s
                        .alive()
                        .iter()
                        .find(|&&v| v != i)
                        .ok_or("no live node to join through")?,
                };
                let keep = flags.contains("keep-store");
                s.restart_through(i, &[via], keep);
                let store = if keep { "its store" } else { "an empty store" };
                format!("{} restarted with {store}, joining via {}", name(i), name(via))
            }
            "leave" => {
                s.leave(i);
                format!("{} leaving", name(i))
            }
            "pause" => {
                s.pause(i);
                format!("{} paused", name(i))
            }
            "resume" => {
                let queued = s.queued(i);
                s.resume(i);
                format!("{} resumed, {queued} queued inputs handled", name(i))
            }
            _ => unreachable!("dispatched by name"),
        };
        Ok(out + "\n")
    }

    fn partition(&mut self, cmd: &Command) -> Result<String> {
        let mut args = cmd.consume_args();
        let (pos, flags) = flags(args.rest_pos(), &["hold"]);
        args.reject_rest()?;
        let side: Vec<usize> = pos.iter().map(|a| self.node(&a.value)).collect::<Result<_>>()?;
        if side.is_empty() {
            return Err("usage: partition nX... [hold]".into());
        }
        let s = self.sim()?;
        let rest: Vec<usize> = (0..s.len()).filter(|i| !side.contains(i)).collect();
        let hold = flags.contains("hold");
        if hold {
            s.partition_hold(&side, &rest);
        } else {
            s.partition(&side, &rest);
        }
        let names = |v: &[usize]| v.iter().map(|&i| name(i)).collect::<Vec<_>>().join(" ");
        let mode = if hold {
            "hold: messages wait"
        } else {
            "drop: messages lost"
        };
        Ok(format!("{} ⇹ {} ({mode})\n", names(&side), names(&rest)))
    }
}

impl goldenscript::Runner for Scenario {
    fn run(&mut self, cmd: &Command) -> Result<String> {
        let mut out = match cmd.name.as_str() {
            "start" => self.start(cmd)?,
            "join" => {
                let mut args = cmd.consume_args();
                let via = match args.lookup("via") {
                    Some(a) => self.node(&a.value)?,
                    None => 0,
                };
                args.reject_rest()?;
                let s = self.sim()?;
                let i = s.add_joining(via);
                format!(
                    "{} {} joins via {}\n",
                    name(i),
                    short(&s.node(i).me().id),
                    name(via)
                )
            }
            "run" => {
                let mut args = cmd.consume_args();
                let ms = parse_ms(&args.next_pos().ok_or("run DURATION")?.value)?;
                args.reject_rest()?;
                self.sim()?.run_for(ms);
                String::new()
            }
            "stabilize" => {
                let mut args = cmd.consume_args();
                let max = parse_ms_or(args.lookup("max"), STABILIZE_MAX_MS)?;
                args.reject_rest()?;
                let s = self.sim()?;
                let step = s.config().chord.stabilize_interval_ms;
                if s.run_until_consistent(step, max) {
                    "converged\n".to_string()
                } else {
                    let problem = s.ring_problem().unwrap_or_default();
                    format!("not converged after {max}ms: {}\n", self.names(&problem))
                }
            }
            "ring" | "check" | "clocks" => {
                cmd.consume_args().reject_rest()?;
                self.sim()?;
                match cmd.name.as_str() {
                    "ring" => self.ring(),
                    "check" => self.check(),
                    _ => self.clocks(),
                }
            }
            "keys" => {
                self.sim()?;
                self.keys(&cmd.consume_args().rest_pos())
            }
            "fingers" => {
                let nodes: Vec<usize> = cmd
                    .consume_args()
                    .rest_pos()
                    .iter()
                    .map(|a| self.node(&a.value))
                    .collect::<Result<_>>()?;
                self.fingers(&nodes)
            }
            "stats" => self.stats(cmd)?,
            "put" | "get" | "del" => self.client(cmd)?,
            "crash" | "restart" | "leave" | "pause" | "resume" => self.fault(cmd)?,
            "partition" => self.partition(cmd)?,
            "heal" => {
                cmd.consume_args().reject_rest()?;
                let s = self.sim()?;
                let held = s.held_messages();
                s.heal();
                format!("healed, {held} held messages delivered\n")
            }
            other => return Err(format!("unknown command '{other}'").into()),
        };
        out += &self.arrived();
        Ok(out)
    }

    fn end_script(&mut self) -> Result<()> {
        match self.pending.values().next() {
            Some(label) => Err(format!("{label}: no reply by the end of the script").into()),
            None => Ok(()),
        }
    }
}

fn run(script: &str) {
    let path = format!("{}/tests/scenarios/{script}.txt", env!("CARGO_MANIFEST_DIR"));
    goldenscript::run(&mut Scenario::default(), &path).unwrap_or_else(|e| panic!("{path}: {e}"));
}

/// One test per script, named after it; an attribute (`#[ignore = "why"]`) goes before its name.
macro_rules! scenarios {
    ($($(#[$attr:meta])* $script:ident),* $(,)?) => {
        $(
            #[test]
            $(#[$attr])*
            fn $script() {
                run(stringify!($script));
            }
        )*
        const SCRIPTS: &[&str] = &[$(stringify!($script)),*];
    };
}

scenarios! {
    join_one_by_one,
    fingers_eight_nodes,
    ring_of_one,
    leave_hands_off_keys,
    replication_preference_list,
    paused_primary_queued_put,
    late_write_after_heal,
    partition_minority_refuses_writes,
    partition_available_rings_merge,
    delete_while_replica_crashed,
    restart_on_own_address,
    clock_skew_within_bound,
    crash_successor_takes_over,
    leave_to_ring_of_one_reply_race,
    restart_neighbours,
}

/// Every script in the directory has its test above.
#[test]
fn every_script_has_a_test() {
    let dir = format!("{}/tests/scenarios", env!("CARGO_MANIFEST_DIR"));
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".txt").map(str::to_string)
        })
        .collect();
    found.sort();
    let mut listed: Vec<&str> = SCRIPTS.to_vec();
    listed.sort();
    assert_eq!(found, listed, "add each script in {dir} to `scenarios!`");
}
