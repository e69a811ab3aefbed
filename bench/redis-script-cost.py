#!/usr/bin/env python3
"""Writes the RESP commands bench/redis-script-cost.sh replays into a redis-server: the calls
the Redis driver sends for a node's puts and gets (server/src/store/redis/mod.rs, `Call::encode`:
an `EVALSHA` of `LUA_PUTS`, or `MULTI`, `EXISTS`, `HMGET` per namespace, `EXEC`), and the plain
`SET` and `GET` of the same keys that twemproxy would send.

    redis-script-cost.py populate OUT                       the scripts loaded, markers, every key
    redis-script-cost.py KIND CALLS GROUPS ENTRIES SEED OUT  CALLS calls of GROUPS namespaces
                                                             with ENTRIES keys each

KIND: puts (the driver's script), watched (the driver's puts in a pipeline without reads: `WATCH`,
one `EXISTS` of the markers, `HMGET` per namespace, then `MULTI`, `HSET` per namespace, `EXEC`), empty (an EVALSHA of `return 1` with the same arguments: what
any script call costs before it runs), set, gets (the driver's reads: `HMGET`, then the
marker's `EXISTS`, per namespace), gets-multi (the same in one `MULTI` ... `EXEC`, as the driver
sent them until the marker check moved after the read), get, and
puts-new, watched-new and set-new: puts and SETs of keys never written before (the driver's puts then add
each key to the namespace's index: a bulk load, or the keys a handoff brings to a new node). Keys are
`key:` and 12 digits (16 bytes, as redis-benchmark's), values 3 bytes (redis-benchmark's
default), spread over NAMESPACES namespaces as a node's vnodes spread them; every key is
written once by `populate`, so the puts replace a stored record (a SET of a key that exists, as
in a benchmark's steady state)."""
import hashlib
import os
import re
import random
import struct
import sys

KEYS = 100_000
NAMESPACES = 8
# The driver's source the scripts are read from (another revision's, for a before and after).
SOURCE = os.environ.get("DRIVER_SOURCE", "server/src/store/redis/mod.rs")


def lua(name):
    """The text of the Rust raw-string constant NAME in the driver's source."""
    src = open(SOURCE).read()
    m = re.search(r'const %s: &str = r#"(.*?)"#;' % name, src, re.S)
    if not m:
        sys.exit(f"redis-script-cost: no {name} in {SOURCE}")
    return m.group(1)


# The driver loads LUA_PUTS alone since it defines what it needs itself; before, behind
# LUA_HELPERS.
PUTS = lua("LUA_PUTS")
if "string.byte" not in PUTS:
    PUTS = lua("LUA_HELPERS") + PUTS
EMPTY = "return 1\n"


def sha(script):
    return hashlib.sha1(script.encode()).hexdigest()


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def key(i):
    return b"key:%012d" % i


def record(version):
    # version (8 bytes, big-endian), tag 1 (live), the value
    return struct.pack(">Q", version) + b"\x01" + b"xxx"


def names(n):
    ns = "{127.0.0.1:7000#%d}" % n
    return [f"ckv:{ns}:data", f"ckv:{ns}:index", f"ckv:{ns}:live", f"ckv:{ns}:marker"]


def populate():
    out = [resp("SCRIPT", "LOAD", PUTS), resp("SCRIPT", "LOAD", EMPTY)]
    for n in range(NAMESPACES):
        out.append(resp("SET", names(n)[3], "x"))
        mine = list(range(n, KEYS, NAMESPACES))
        for j in range(0, len(mine), 256):
            chunk = mine[j : j + 256]
            args = ["EVALSHA", sha(PUTS), "4", *names(n)]
            args.append(b"".join(hashlib.sha1(key(i)).hexdigest().encode() for i in chunk))
            for i in chunk:
                args += [key(i), record(1)]
            out.append(resp(*args))
        for i in mine:
            out.append(resp("SET", key(i), "xxx"))
    return out


def calls(kind, count, groups, entries, seed):
    rng = random.Random(seed)
    version = 2
    out = []
    if kind.endswith("-new"):
        # Never written: above the populated keys, drawn from a range wide enough that the
        # warm-up pass and the measured pass hardly meet.
        low, high = KEYS // NAMESPACES, 1000 * KEYS // NAMESPACES
    else:
        low, high = 0, KEYS // NAMESPACES
    new = kind.endswith("-new")
    kind = kind.removesuffix("-new")
    for _ in range(count):
        spaces = rng.sample(range(NAMESPACES), groups)
        picked = [[rng.randrange(low, high) * NAMESPACES + n for _ in range(entries)] for n in spaces]
        if kind in ("set", "get"):
            for ks in picked:
                for i in ks:
                    out.append(resp("SET", key(i), "xxx") if kind == "set" else resp("GET", key(i)))
        elif kind == "gets":
            for n, ks in zip(spaces, picked):
                out.append(resp("HMGET", names(n)[0], *[key(i) for i in ks]))
                out.append(resp("EXISTS", names(n)[3]))
        elif kind == "gets-multi":
            out.append(resp("MULTI"))
            for n, ks in zip(spaces, picked):
                out.append(resp("EXISTS", names(n)[3]))
                out.append(resp("HMGET", names(n)[0], *[key(i) for i in ks]))
            out.append(resp("EXEC"))
        elif kind == "watched":
            # The driver's puts in a pipeline without reads (server/src/store/redis/watched.rs):
            # the records read under WATCH, the merges decided by the node, the writes in one
            # MULTI ... EXEC (the index members and the live count only for keys never written).
            watched = []
            for n in spaces:
                watched += [names(n)[0], names(n)[3]]
            out.append(resp("WATCH", *watched))
            out.append(resp("EXISTS", *[names(n)[3] for n in spaces]))
            for n, ks in zip(spaces, picked):
                out.append(resp("HMGET", names(n)[0], *[key(i) for i in ks]))
            out.append(resp("MULTI"))
            for n, ks in zip(spaces, picked):
                if new:
                    members = []
                    for i in ks:
                        members += ["0", hashlib.sha1(key(i)).hexdigest().encode() + key(i)]
                    out.append(resp("ZADD", names(n)[1], *members))
                fields = []
                for i in ks:
                    version += 1
                    fields += [key(i), record(version)]
                out.append(resp("HSET", names(n)[0], *fields))
                if new:
                    out.append(resp("INCRBY", names(n)[2], str(len(ks))))
            out.append(resp("EXEC"))
        else:
            script = PUTS if kind == "puts" else EMPTY
            args = ["EVALSHA", sha(script), str(4 * groups)]
            for n in spaces:
                args += names(n)
            for ks in picked:
                args.append(b"".join(hashlib.sha1(key(i)).hexdigest().encode() for i in ks))
                for i in ks:
                    version += 1
                    args += [key(i), record(version)]
            out.append(resp(*args))
    return out


def main():
    if sys.argv[1] == "populate":
        cmds, path = populate(), sys.argv[2]
    else:
        kind, count, groups, entries, seed, path = sys.argv[1:7]
        if kind not in ("puts", "empty", "set", "gets", "get", "puts-new", "set-new", "gets-multi", "watched", "watched-new"):
            sys.exit(f"redis-script-cost: unknown kind {kind}")
        cmds = calls(kind, int(count), int(groups), int(entries), int(seed))
    with open(path, "wb") as f:
        f.write(b"".join(cmds))


if __name__ == "__main__":
    main()
