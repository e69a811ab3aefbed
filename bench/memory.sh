#!/usr/bin/env bash
# Memory per key: one `chordkv node --resp` (memory store, one vnode, no replicas) beside one
# redis-server, each loaded with KEYS keys by `redis-cli --pipe`; bytes per key is the growth of
# the process' resident set (VmRSS) divided by KEYS. Shapes are key/value sizes in bytes.
#
#   bench/memory.sh                      # writes results/memory.md
#
# Environment: KEYS (default 1000000), SHAPES (default "16/100 16/1000 64/10"), PORT_BASE
# (default 17600: the node's ports PORT_BASE, PORT_BASE+1; redis-server PORT_BASE+2), OUT.
# Builds the release binary; installs redis-server and redis-tools when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

KEYS=${KEYS:-1000000}
SHAPES=${SHAPES:-16/100 16/1000 64/10}
PORT_BASE=${PORT_BASE:-17600}
OUT=${OUT:-results/memory.md}

need_redis
bench_processes

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# KEYS SET commands in RESP: keys k<zero-padded i> of `key` bytes, values of `value` bytes.
commands() {
    python3 - "$KEYS" "$1" "$2" <<'EOF'
import sys
n, kb, vb = map(int, sys.argv[1:4])
value = b"v" * vb
out = sys.stdout.buffer
for i in range(n):
    key = b"k" + str(i).encode().rjust(kb - 1, b"0")
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, vb, value))
EOF
}
# Loads the commands into the server on `port` (process `pid`); prints bytes per key.
load() {
    local pid=$1 port=$2 before after
    redis-cli -p "$port" PING >/dev/null
    sleep 1
    before=$(rss_kb "$pid")
    redis-cli -p "$port" --pipe <"$work/cmds" >"$work/pipe.out" 2>&1
    grep -q "errors: 0" "$work/pipe.out" || { cat "$work/pipe.out" >&2; exit 1; }
    sleep 2
    after=$(rss_kb "$pid")
    local dbsize
    dbsize=$(redis-cli -p "$port" DBSIZE)
    [ "$dbsize" = "$KEYS" ] || { echo "DBSIZE $dbsize, expected $KEYS" >&2; exit 1; }
    awk -v a="$after" -v b="$before" -v n="$KEYS" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}'
}

rows=()
for shape in $SHAPES; do
    kb=${shape%/*}
    vb=${shape#*/}
    commands "$kb" "$vb" >"$work/cmds"

    redis-server --port $((PORT_BASE + 2)) --save '' --appendonly no >"$work/redis.log" 2>&1 &
    rpid=$!
    pids+=($rpid)
    for _ in $(seq 50); do redis-cli -p $((PORT_BASE + 2)) PING >/dev/null 2>&1 && break; sleep 0.1; done
    redis_bpk=$(load "$rpid" $((PORT_BASE + 2)))
    redis-cli -p $((PORT_BASE + 2)) SHUTDOWN NOSAVE >/dev/null 2>&1 || true
    wait "$rpid" 2>/dev/null || true

    # `--partition-policy available`: no leases, so a load on a machine busy enough to starve
    # the node past its lease (other builds, other benchmarks) is not refused with NotReady;
    # the policy keeps no state per key, so the bytes per key are the same under either.
    $bin node --listen 127.0.0.1:$PORT_BASE --resp 127.0.0.1:$((PORT_BASE + 1)) --vnodes 1 \
        --replicas 0 --successors 1 --partition-policy available >"$work/node.log" 2>&1 &
    npid=$!
    pids+=($npid)
    for _ in $(seq 100); do redis-cli -p $((PORT_BASE + 1)) PING >/dev/null 2>&1 && break; sleep 0.1; done
    node_bpk=$(load "$npid" $((PORT_BASE + 1)))
    kill "$npid"
    wait "$npid" 2>/dev/null || true

    ratio=$(awk -v a="$node_bpk" -v b="$redis_bpk" 'BEGIN {printf "%.2f", a / b}')
    rows+=("| $kb | $vb | $node_bpk | $redis_bpk | $ratio |")
done

{
    echo "# Memory per key"
    echo
    echo "Produced by \`bench/memory.sh\` (KEYS=$KEYS) at $(revision), $(date -u +%Y-%m-%d), release build:"
    echo "one \`chordkv node --resp\` (memory store, \`--vnodes 1 --replicas 0 --partition-policy available\`) and one redis-server"
    echo "$(redis-server --version | awk '{print $3}'), each loaded with $KEYS SETs by \`redis-cli --pipe\`;"
    echo "bytes per key = growth of VmRSS over the load / keys (DBSIZE checked)."
    echo
    echo "| key bytes | value bytes | chordkv B/key | redis-server B/key | ratio |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
} >"$OUT"
cat "$OUT"
