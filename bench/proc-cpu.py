#!/usr/bin/env python3
"""CPU time and context switches of a benchmark's processes, per request, from /proc.

Used by bench/compare-redis.sh (see bench/cpu-per-request.sh); three steps:

  proc-cpu.py snap LABEL=PID...        > before.json   # every thread's counters, and the
                                                         # machine's busy time (/proc/stat)
  proc-cpu.py diff BEFORE AFTER TARGET PIPELINE TEST REQUESTS BENCH_TICKS WALL_S >> cpu.csv
  proc-cpu.py table cpu.csv PIPELINE... > tables.md     # medians over the repeats
  proc-cpu.py ceiling cpu.csv PIPELINE... > ceiling.md  # what the Redis-driver goals allow
  proc-cpu.py cmdstats TARGET PIPELINE TEST REQUESTS INFO... >> cmd.csv  # redis-server's
                                                         # INFO commandstats, per request
  proc-cpu.py cmdtable cmd.csv PIPELINE... > cmd.md

Labels: `node:TARGET` (a chordkv node of TARGET), `launcher:TARGET` (its `chordkv cluster`),
`redis` (a redis-server), `twemproxy`. A node's threads are told apart by name: its main
thread runs the event loop, `chordkv-store-pipeline` the batched store ops, the other
`chordkv-store-N` the ops that run alone. redis-benchmark's CPU comes as BENCH_TICKS (the
shell's reaped children's utime+stime, /proc/self/stat fields 16-17, around its run).

utime and stime are in clock ticks (usually 10 ms), so a run should use seconds of CPU; the
context switches are voluntary (the thread waited: for a read, a futex, epoll) plus
involuntary (preempted), from /proc/PID/task/TID/status.
"""

import json
import re
import os
import statistics
import sys

TICK_US = 1_000_000 / os.sysconf("SC_CLK_TCK")

# The kinds of a target's CPU, in the order the tables show them.
KINDS = [
    "node event loop",
    "node pipeline worker",
    "node store workers",
    "node other threads",
    "twemproxy",
    "redis-server",
    "redis-benchmark",
]


def read_thread(pid, tid):
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        stat = f.read()
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    rest = stat[stat.rindex(")") + 2 :].split()
    ticks = int(rest[11]) + int(rest[12])  # utime, stime (fields 14 and 15)
    vol = nonvol = 0
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                vol = int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                nonvol = int(line.split()[1])
    return {"comm": comm, "ticks": ticks, "vol": vol, "nonvol": nonvol}


def machine_busy():
    with open("/proc/stat") as f:
        cpu = f.readline().split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in cpu[:8])
    return user + nice + system + irq + softirq + steal


def snap(args):
    threads = {}
    for arg in args:
        label, pid = arg.rsplit("=", 1)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                t = read_thread(pid, tid)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue  # the thread ended meanwhile
            t["label"] = label
            t["main"] = tid == pid
            threads[f"{pid}/{tid}"] = t
    json.dump({"machine": machine_busy(), "threads": threads}, sys.stdout)


def kind_of(thread, target):
    label = thread["label"]
    if label == f"node:{target}":
        if thread["main"]:
            return "node event loop"
        if thread["comm"].startswith("chordkv-store-p"):
            return "node pipeline worker"
        if thread["comm"].startswith("chordkv-store-"):
            return "node store workers"
        return "node other threads"
    if label == "redis":
        return "redis-server"
    if label == "twemproxy":
        return "twemproxy"
    if label == f"launcher:{target}":
        return "node other threads"
    return "idle other targets"


def diff(before_path, after_path, target, pipeline, test, requests, bench_ticks, wall_s):
    with open(before_path) as f:
        before = json.load(f)
    with open(after_path) as f:
        after = json.load(f)
    requests = int(requests)
    us = {}
    switches = {}
    for key, t in after["threads"].items():
        b = before["threads"].get(key, {"ticks": 0, "vol": 0, "nonvol": 0})
        kind = kind_of(t, target)
        us[kind] = us.get(kind, 0) + (t["ticks"] - b["ticks"]) * TICK_US
        switches[kind] = switches.get(kind, 0) + (t["vol"] - b["vol"]) + (t["nonvol"] - b["nonvol"])
    us["redis-benchmark"] = int(bench_ticks) * TICK_US
    machine = (after["machine"] - before["machine"]) * TICK_US
    # Other targets' idle nodes are part of the rest.
    us.pop("idle other targets", None)
    switches.pop("idle other targets", None)
    accounted = sum(us.values())
    us["rest of the machine"] = max(0.0, machine - accounted)
    # The share of the machine's cores that were busy, whoever used them.
    cores = os.cpu_count() or 1
    busy = machine / (float(wall_s) * 1e6 * cores) if float(wall_s) > 0 else 0.0
    for kind, v in us.items():
        print(f"{target},{pipeline},{test},us,{kind},{v / requests:.3f}")
    for kind, v in switches.items():
        print(f"{target},{pipeline},{test},cs,{kind},{v / requests:.4f}")
    print(f"{target},{pipeline},{test},busy,machine,{busy:.3f}")


def runs(csv_path):
    """{(target, pipeline, test, what, kind): [value per run]} of a cpu.csv, and the targets in
    order."""
    rows = {}
    targets = []
    with open(csv_path) as f:
        for line in f:
            target, pipeline, test, what, kind, value = line.strip().split(",")
            if target not in targets:
                targets.append(target)
            rows.setdefault((target, pipeline, test, what, kind), []).append(float(value))
    return rows, targets


def table(csv_path, pipelines):
    rows, targets = runs(csv_path)

    def cell(target, pipeline, test, what, kind, digits):
        values = rows.get((target, pipeline, test, what, kind))
        return "-" if not values else f"{statistics.median(values):.{digits}f}"

    def total(target, pipeline, test):
        runs = [
            rows.get((target, pipeline, test, "us", k), []) for k in KINDS
        ]
        n = max((len(r) for r in runs), default=0)
        if n == 0:
            return "-"
        sums = [sum(r[i] for r in runs if i < len(r)) for i in range(n)]
        return f"{statistics.median(sums):.1f}"

    shown = [k for k in KINDS if any(key[3] == "us" and key[4] == k and max(rows[key]) > 0 for key in rows)]
    for pipeline in pipelines:
        print(f"### CPU microseconds per request, -P {pipeline}")
        print()
        print("| target | test | " + " | ".join(shown) + " | **total** | rest of the machine | machine busy |")
        print("|---|---|" + "---:|" * (len(shown) + 3))
        for test in ("SET", "GET"):
            for target in targets:
                cells = [cell(target, pipeline, test, "us", k, 1) for k in shown]
                print(
                    f"| {target} | {test} | "
                    + " | ".join(cells)
                    + f" | **{total(target, pipeline, test)}**"
                    + f" | {cell(target, pipeline, test, 'us', 'rest of the machine', 1)}"
                    + f" | {cell(target, pipeline, test, 'busy', 'machine', 2)} |"
                )
        print()
        cs_kinds = [k for k in shown if k != "redis-benchmark"]
        print(f"### Context switches per request (voluntary + involuntary), -P {pipeline}")
        print()
        print("| target | test | " + " | ".join(cs_kinds) + " |")
        print("|---|---|" + "---:|" * len(cs_kinds))
        for test in ("SET", "GET"):
            for target in targets:
                cells = [cell(target, pipeline, test, "cs", k, 2) for k in cs_kinds]
                print(f"| {target} | {test} | " + " | ".join(cells) + " |")
        print()


# The node's own kinds of CPU (every thread of a chordkv node and its launcher).
NODE_KINDS = KINDS[:4]


def medians(csv_path):
    """{(target, pipeline, test, what, kind): median} of a cpu.csv, and the targets in order."""
    rows, targets = runs(csv_path)
    return {k: statistics.median(v) for k, v in rows.items()}, targets


def ceiling(csv_path, pipelines):
    """The best ratio to twemproxy a chordkv-8-redis target could reach on this machine, from
    the measured CPU per request of the others (see the text it prints)."""
    med, targets = medians(csv_path)

    def us(target, pipeline, test, kinds):
        got = [med.get((target, pipeline, test, "us", k)) for k in kinds]
        return None if all(g is None for g in got) else sum(g or 0.0 for g in got)

    def total(target, pipeline, test):
        return us(target, pipeline, test, KINDS)

    # (redis target, the memory-store target with its replication, copies written per SET)
    pairs = [("chordkv-8-redis-r0", "chordkv-8-r0", 1), ("chordkv-8-redis-r2", "chordkv-8", 3)]
    print("| -P | test | target | its ratio by CPU | ceiling | twemproxy total us | memory-store node + redis-benchmark us | redis-server us per copy | copies |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    shown = 0
    for pipeline in pipelines:
        for test in ("SET", "GET"):
            tw = total("twemproxy", pipeline, test)
            plain = [
                v
                for v in (
                    us("redis", pipeline, test, ["redis-server"]),
                    us("twemproxy", pipeline, test, ["redis-server"]),
                )
                if v is not None
            ]
            for target, memory, copies in pairs:
                node = us(memory, pipeline, test, NODE_KINDS + ["redis-benchmark"])
                measured = total(target, pipeline, test)
                if tw is None or node is None or not plain:
                    continue
                n = copies if test == "SET" else 1
                bound = tw / (node + n * min(plain))
                ratio = "-" if measured is None else f"{tw / measured:.2f}"
                print(
                    f"| {pipeline} | {test} | {target} | {ratio} | {bound:.2f} | {tw:.1f} | {node:.1f} | {min(plain):.1f} | {n} |"
                )
                shown += 1
    if shown == 0:
        print("| - | - | (needs the twemproxy, redis, chordkv-8-r0 and chordkv-8 targets) | - | - | - | - | - | - |")
    print()


def cmdstats(target, pipeline, test, requests, infos):
    """Sums `INFO commandstats` outputs (files, one per redis-server, after a CONFIG RESETSTAT)
    into calls and microseconds per request of each command."""
    calls = {}
    usec = {}
    for path in infos:
        with open(path) as f:
            for line in f:
                m = re.match(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", line.strip())
                if not m or m.group(1).startswith("config"):
                    continue
                calls[m.group(1)] = calls.get(m.group(1), 0) + int(m.group(2))
                usec[m.group(1)] = usec.get(m.group(1), 0) + int(m.group(3))
    n = int(requests)
    for cmd in calls:
        print(f"{target},{pipeline},{test},{cmd},{calls[cmd] / n:.4f},{usec[cmd] / n:.4f}")


def cmdtable(csv_path, pipelines):
    rows = {}
    order = []
    with open(csv_path) as f:
        for line in f:
            target, pipeline, test, cmd, calls, usec = line.strip().split(",")
            key = (target, pipeline, test)
            if key not in order:
                order.append(key)
            rows.setdefault(key, {}).setdefault(cmd, []).append((float(calls), float(usec)))
    for pipeline in pipelines:
        print(f"### redis-server command time per request, -P {pipeline}")
        print()
        print("| target | test | commands: calls per request / us per request |")
        print("|---|---|---|")
        for test in ("SET", "GET"):
            for key in order:
                if key[1] != pipeline or key[2] != test:
                    continue
                stats = rows[key]
                cells = []
                for cmd in sorted(stats, key=lambda c: -statistics.median(u for _, u in stats[c])):
                    c = statistics.median(x for x, _ in stats[cmd])
                    u = statistics.median(x for _, x in stats[cmd])
                    if c >= 0.001:
                        cells.append(f"{cmd} {c:.2f} / {u:.2f}")
                print(f"| {key[0]} | {test} | {', '.join(cells)} |")
        print()


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    command, args = sys.argv[1], sys.argv[2:]
    if command == "snap":
        snap(args)
    elif command == "diff" and len(args) == 8:
        diff(*args)
    elif command == "table" and len(args) >= 2:
        table(args[0], args[1:])
    elif command == "ceiling" and len(args) >= 2:
        ceiling(args[0], args[1:])
    elif command == "cmdstats" and len(args) >= 5:
        cmdstats(args[0], args[1], args[2], args[3], args[4:])
    elif command == "cmdtable" and len(args) >= 2:
        cmdtable(args[0], args[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
