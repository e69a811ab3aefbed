#!/usr/bin/env bash
# Instructions per request: one `chordkv node --resp` (default options, as compare-redis.sh's
# chordkv-1: memory store, 8 vnodes) and one redis-server, each
# run under valgrind's callgrind with collection switched on only while redis-benchmark runs
# (no start-up or shutdown in the count), at -P 1 and -P 16, a fresh process for each. The
# count does not depend on how busy the machine is (wall-clock throughput does, by tens of per
# cent on a shared machine), so the ratio to redis-server is a stable number.
#
#   bench/instructions.sh                # writes results/instructions.md
#
# Environment: REQUESTS per test (default 20000; SET and GET each, so 2 x REQUESTS requests
# per count), PORT_BASE (default 17650), OUT, TOP (functions listed per profile, default 25),
# PIPELINES (default "1 16").
#
# Under callgrind SHA-1 runs the portable code (valgrind does not offer the CPU's SHA
# instructions), so SHA-1 weighs more in these counts than it does on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

REQUESTS=${REQUESTS:-20000}
PORT_BASE=${PORT_BASE:-17650}
OUT=${OUT:-results/instructions.md}
TOP=${TOP:-25}
PIPELINES=${PIPELINES:-"1 16"}

need_redis
command -v valgrind >/dev/null 2>&1 || env DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null
bench_processes

# count NAME P PORT CMD...: runs CMD under callgrind, waits for PORT, counts the instructions of
# redis-benchmark's SET and GET at pipeline depth P; prints instructions per request.
count() {
    local name=$1 p=$2 port=$3
    shift 3
    local out="$work/$name-P$p.cg"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$@" \
        >"$work/$name-P$p.log" 2>&1 &
    local vpid=$!
    pids+=($vpid)
    for _ in $(seq 600); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -p "$port" PING >/dev/null || { tail -5 "$work/$name-P$p.log" >&2; exit 1; }
    sleep 2 # the node's first lease and stabilize rounds, outside the count
    callgrind_control -i on "$vpid" >/dev/null
    redis-benchmark -p "$port" -c 50 -n "$REQUESTS" -r 100000 -P "$p" -t set,get -q \
        >"$work/$name-P$p.bench" 2>&1
    callgrind_control -i off "$vpid" >/dev/null
    if grep -qi "error" "$work/$name-P$p.bench"; then
        echo "$name -P $p: redis-benchmark reported errors:" >&2
        head -5 "$work/$name-P$p.bench" >&2
        exit 1
    fi
    kill -TERM "$vpid" 2>/dev/null || true
    wait "$vpid" 2>/dev/null || true
    local total
    total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    callgrind_annotate --inclusive=yes "$out" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | head -"$TOP" \
        >"$work/$name-P$p.top"
    awk -v t="$total" -v n="$REQUESTS" 'BEGIN {printf "%.0f", t / (2 * n)}'
}

rows=()
profiles=()
for p in $PIPELINES; do
    redis_ipr=$(count redis "$p" $((PORT_BASE + 2)) \
        redis-server --port $((PORT_BASE + 2)) --save '' --appendonly no)
    node_ipr=$(count chordkv "$p" $((PORT_BASE + 1)) \
        "$bin" node --listen 127.0.0.1:$PORT_BASE --resp 127.0.0.1:$((PORT_BASE + 1)))
    ratio=$(awk -v a="$node_ipr" -v b="$redis_ipr" 'BEGIN {printf "%.2f", a / b}')
    rows+=("| $p | $node_ipr | $redis_ipr | $ratio |")
    profiles+=("$p")
    cp "$work/chordkv-P$p.top" "$work/keep-chordkv-P$p.top"
done

{
    echo "# Instructions per request"
    echo
    echo "Produced by \`bench/instructions.sh\` (REQUESTS=$REQUESTS) at $(git rev-parse --short HEAD), $(date -u +%Y-%m-%d), release build:"
    echo "one \`chordkv node --resp\` with the default options (memory store, 8 vnodes), as compare-redis.sh's chordkv-1, and one"
    echo "$(redis-server --version | awk '{print $1, $2, $3}'), each under \`valgrind --tool=callgrind --instr-atstart=no\`,"
    echo "collection on only while \`redis-benchmark -c 50 -n $REQUESTS -r 100000 -P P -t set,get\` runs;"
    echo "instructions per request = the program's total / $((2 * REQUESTS)) requests. A fresh process per row."
    echo "SHA-1 runs its portable code under valgrind, so it weighs more here than on the CPU."
    echo
    echo "| -P | chordkv instr./request | redis-server instr./request | ratio |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    for p in "${profiles[@]}"; do
        echo
        echo "## chordkv at -P $p: inclusive counts, top $TOP (\`callgrind_annotate --inclusive=yes\`)"
        echo
        echo '```text'
        cat "$work/keep-chordkv-P$p.top"
        echo '```'
    done
} >"$OUT"
cat "$OUT"
