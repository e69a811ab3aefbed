#!/usr/bin/env bash
# What a ring costs right after a burst of writes and when idle: 8 `chordkv node` processes
# (`chordkv cluster --nodes 8`, default 8 vnodes each, replicas 2), filled with KEYS writes by
# redis-benchmark, watched for AFTER_S straight away (the anti-entropy rounds that follow
# writes), left alone for SETTLE_S, then watched for WINDOW_S (idle): the CPU time of the node
# processes, and of their redis-server for the Redis store, from /proc; with the Redis store,
# that server's INFO commandstats over the idle window; the nodes' `store_answers_cached`
# (bench/idle-cost.sh).
#
#   bench/idle-cost.sh                   # writes results/idle-cost.md
#
# With BEFORE_BIN=path (a release `chordkv` built from an earlier commit, BEFORE=its name), the
# same runs with that binary, in rows of their own.
#
# Environment: KEYS (default 100000: redis-benchmark -n KEYS -r KEYS, -P 16), AFTER_S (15),
# SETTLE_S (20), WINDOW_S (30), STORES (default "memory redis"), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

KEYS=${KEYS:-100000}
AFTER_S=${AFTER_S:-15}
SETTLE_S=${SETTLE_S:-20}
WINDOW_S=${WINDOW_S:-30}
STORES=${STORES:-"memory redis"}
OUT=${OUT:-results/idle-cost.md}
BEFORE_BIN=${BEFORE_BIN:-}
BEFORE=${BEFORE:-before}

need_redis
bench_processes
rev=$(revision)

ticks_of() { # pid...: utime + stime of the processes, in clock ticks
    local t=0 p
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] || continue
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}
hz=$(getconf CLK_TCK)

# run LABEL BIN STORE: one row of the table (and the commandstats lines in $work/LABEL-STORE.cmd).
run() {
    local label=$1 b=$2 store=$3 rport="" rpid="" args=()
    local name="$label-$store"
    if [ "$store" = redis ]; then
        rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        redis-server --port "$rport" --save '' --appendonly no >"$work/$name.redis.log" 2>&1 &
        rpid=$!
        pids+=("$rpid")
        for _ in $(seq 100); do redis-cli -p "$rport" PING >/dev/null 2>&1 && break; sleep 0.1; done
        args=(--store "redis://127.0.0.1:$rport/0")
    fi
    "$b" cluster --nodes 8 --resp "${args[@]}" >"$work/$name.out" 2>"$work/$name.err" &
    local launcher=$!
    pids+=("$launcher")
    for _ in $(seq 1200); do grep -q '^ready: ' "$work/$name.out" && break; sleep 0.1; done
    grep -q '^ready: ' "$work/$name.out" || { echo "$name: the ring did not form: $(tail -3 "$work/$name.err")" >&2; exit 1; }
    local port node nodes
    port=$(sed -n 's/^resp: \([^ ]*\).*/\1/p' "$work/$name.out" | sed 's/.*://')
    node=$(sed -n 's/^ready: \([^ ]*\).*/\1/p' "$work/$name.out")
    mapfile -t nodes < <(pgrep -P "$launcher")
    redis-benchmark -p "$port" -c 50 -n "$KEYS" -r "$KEYS" -P 16 -t set -q >/dev/null 2>&1
    local n0 r0 n1 r1 cached=0 a after_nodes after_redis="-"
    n0=$(ticks_of "${nodes[@]}")
    r0=$(ticks_of $rpid)
    sleep "$AFTER_S"
    n1=$(ticks_of "${nodes[@]}")
    r1=$(ticks_of $rpid)
    after_nodes=$(awk -v t=$((n1 - n0)) -v hz="$hz" -v w="$AFTER_S" 'BEGIN {printf "%.3f", t / hz / w}')
    [ -n "$rport" ] && after_redis=$(awk -v t=$((r1 - r0)) -v hz="$hz" -v w="$AFTER_S" 'BEGIN {printf "%.3f", t / hz / w}')
    sleep "$SETTLE_S"
    [ -n "$rport" ] && redis-cli -p "$rport" CONFIG RESETSTAT >/dev/null
    n0=$(ticks_of "${nodes[@]}")
    r0=$(ticks_of $rpid)
    sleep "$WINDOW_S"
    n1=$(ticks_of "${nodes[@]}")
    r1=$(ticks_of $rpid)
    for a in $(sed -n 's/^ready: //p' "$work/$name.out"); do
        c=$("$b" stats --node "$a" 2>/dev/null | awk '$1 == "store_answers_cached" {print $2}')
        cached=$((cached + ${c:-0}))
    done
    : "$node"
    if [ -n "$rport" ]; then
        redis-cli -p "$rport" INFO commandstats | grep '^cmdstat_' | grep -v 'config|' |
            sed 's/^cmdstat_//; s/,rejected_calls.*//' >"$work/$name.cmd" || true
    fi
    kill -INT "$launcher" 2>/dev/null || true
    wait "$launcher" 2>/dev/null || true
    [ -n "$rpid" ] && { kill "$rpid" 2>/dev/null || true; wait "$rpid" 2>/dev/null || true; }
    local redis_cell="-"
    [ -n "$rport" ] && redis_cell=$(awk -v t=$((r1 - r0)) -v hz="$hz" -v w="$WINDOW_S" 'BEGIN {printf "%.3f", t / hz / w}')
    echo "| $label | $store | $after_nodes | $after_redis | $(awk -v t=$((n1 - n0)) -v hz="$hz" -v w="$WINDOW_S" 'BEGIN {printf "%.3f", t / hz / w}') | $redis_cell | $cached |" >>"$work/rows"
}

: >"$work/rows"
for store in $STORES; do
    if [ -n "$BEFORE_BIN" ]; then run "$BEFORE" "$BEFORE_BIN" "$store"; fi
    run "$rev" "$bin" "$store"
done

{
    echo "# What a ring costs after a burst of writes, and idle"
    echo
    echo "Produced by \`$([ -n "$BEFORE_BIN" ] && echo "BEFORE=$BEFORE BEFORE_BIN=... ")bench/idle-cost.sh\` (KEYS=$KEYS, AFTER_S=$AFTER_S, SETTLE_S=$SETTLE_S, WINDOW_S=$WINDOW_S) at $rev, $(date -u '+%Y-%m-%d %H:%M UTC'),"
    echo "on $(nproc) cores; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "\`chordkv cluster --nodes 8 --resp\` (8 vnodes per process, replicas 2; with the Redis store,"
    echo "\`--store redis://...\`: the 8 nodes in one redis-server), filled with"
    echo "\`redis-benchmark -c 50 -n $KEYS -r $KEYS -P 16 -t set\`. The CPU the 8 node processes and the"
    echo "redis-server used, in cores (CPU seconds per second, from /proc utime + stime): over the"
    echo "$AFTER_S s right after the writes (the anti-entropy rounds that compare the copies the writes"
    echo "changed), and, after $SETTLE_S s more, over $WINDOW_S s idle; and \`store_answers_cached\` summed over"
    echo "the nodes at the end (digests and collections answered without a scan,"
    echo "\`core/src/chord/store_cache.rs\`). Nothing reads or writes during either window: what remains"
    echo "is stabilize, fix_fingers, leases, anti-entropy rounds and the stray-copy collection."
    echo
    echo "| build | store | after the writes: 8 nodes, cores | redis-server, cores | idle: 8 nodes, cores | redis-server, cores | store answers cached |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    cat "$work/rows"
    for f in "$work"/*.cmd; do
        [ -e "$f" ] || continue
        echo
        echo "$(basename "$f" .cmd): redis-server's INFO commandstats over the idle window:"
        echo
        echo '```text'
        cat "$f"
        echo '```'
    done
} >"$OUT"
cat "$OUT"
