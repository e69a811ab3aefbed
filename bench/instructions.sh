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
# With BEFORE_BIN=path (a release `chordkv` built from an earlier commit, BEFORE=its name for
# the report), that binary is counted the same way, in a column of its own.
#
# Environment: REQUESTS per test (default 20000; SET and GET each, so 2 x REQUESTS requests
# per count), PORT_BASE (default 17650), OUT, TOP (functions listed per profile, default 25),
# PIPELINES (default "1 16"), TESTS (redis-benchmark's -t, default set,get: REQUESTS of each),
# PREFILL (SETs of the same 100,000 keys sent at -P 16 before the count, default 0: the GETs of
# set,get mostly miss; `TESTS=get PREFILL=300000` counts GETs of present keys).
#
#   TESTS=get PREFILL=300000 OUT=results/instructions-get.md bench/instructions.sh
#   TESTS=ping_mbulk OUT=results/instructions-ping.md bench/instructions.sh
#
# Under callgrind SHA-1 runs the portable code (valgrind does not offer the CPU's SHA
# instructions), so SHA-1 weighs more in these counts than it does on the CPU; on a CPU with
# the SHA extensions the report adds the count with SHA-1's portable instructions replaced by
# those of the SHA-NI block function the node runs (counted in the binary with objdump).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

REQUESTS=${REQUESTS:-20000}
PORT_BASE=${PORT_BASE:-17650}
OUT=${OUT:-results/instructions.md}
TOP=${TOP:-25}
PIPELINES=${PIPELINES:-"1 16"}
TESTS=${TESTS:-set,get}
PREFILL=${PREFILL:-0}
ntests=$(tr ',' '\n' <<<"$TESTS" | grep -c .)

need_redis
command -v valgrind >/dev/null 2>&1 || env DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null
bench_processes
# Before the report overwrites a tracked file (which would read as a change).
rev=$(revision)

# count NAME P PORT CMD...: runs CMD under callgrind, waits for PORT, counts the instructions of
# redis-benchmark's TESTS at pipeline depth P; prints instructions per request.
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
    if [ "$PREFILL" -gt 0 ]; then
        redis-benchmark -p "$port" -c 50 -n "$PREFILL" -r 100000 -P 16 -t set -q >/dev/null 2>&1
    fi
    callgrind_control -i on "$vpid" >/dev/null
    redis-benchmark -p "$port" -c 50 -n "$REQUESTS" -r 100000 -P "$p" -t "$TESTS" -q \
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
    # SHA-1's portable block function: its inclusive instructions and its calls (one 64-byte
    # block a call for redis-benchmark's keys, which are under 56 bytes).
    local sha_instr sha_calls
    sha_instr=$(callgrind_annotate --inclusive=yes "$out" 2>/dev/null |
        awk '/sha1::compress::compress \[/ && !n {gsub(",", "", $1); print $1; n = 1}' || true)
    sha_calls=$(callgrind_annotate --tree=caller "$out" 2>/dev/null |
        grep -B8 -E '\*  .*sha1::compress::compress \[' | grep -E '^ *[0-9,]+ .*<' |
        grep -oE '\([0-9,]+x\)' | tr -d '(),x' | awk '{s += $1} END {print s + 0}' || true)
    echo "$total ${sha_instr:-0} ${sha_calls:-0}" >"$work/$name-P$p.counts"
    awk -v t="$total" -v n="$REQUESTS" -v k="$ntests" 'BEGIN {printf "%.0f", t / (k * n)}'
}

# Instructions one 64-byte block takes in the sha1 crate's SHA-NI function (`digest_blocks`:
# straight-line code, one pass of its loop a block) in binary $1, when this CPU has the SHA
# extensions (then the node runs it, not the portable code callgrind runs); empty otherwise.
shani_per_block() {
    grep -qw sha_ni /proc/cpuinfo || return 0
    objdump -d --no-show-raw-insn "$1" 2>/dev/null |
        awk '/<_ZN4sha18compress3x8613digest_blocks[^>]*>:$/ {f = 1; next}
             f && /^$/ {f = 0}
             f && /^ +[0-9a-f]+:/ {n++}
             END {if (n) print n}'
}

# The chordkv count of run NAME at -P P with SHA-1's portable instructions replaced by the SHA-NI
# function's, per request.
on_this_cpu() {
    local per_block=$1 name=$2 p=$3
    read -r total sha_instr sha_calls <"$work/$name-P$p.counts"
    awk -v t="$total" -v s="$sha_instr" -v c="$sha_calls" -v b="$per_block" -v n="$REQUESTS" -v k="$ntests" \
        'BEGIN {printf "%.0f", (t - s + c * b) / (k * n)}'
}

rows=()
profiles=()
per_block=$(shani_per_block "$bin")
BEFORE_BIN=${BEFORE_BIN:-}
BEFORE=${BEFORE:-before}
for p in $PIPELINES; do
    before_cell=''
    if [ -n "$BEFORE_BIN" ]; then
        before_ipr=$(count before "$p" $((PORT_BASE + 4)) \
            "$BEFORE_BIN" node --listen 127.0.0.1:$((PORT_BASE + 3)) --resp 127.0.0.1:$((PORT_BASE + 4)))
        before_cell=" $before_ipr |"
    fi
    redis_ipr=$(count redis "$p" $((PORT_BASE + 2)) \
        redis-server --port $((PORT_BASE + 2)) --save '' --appendonly no)
    node_ipr=$(count chordkv "$p" $((PORT_BASE + 1)) \
        "$bin" node --listen 127.0.0.1:$PORT_BASE --resp 127.0.0.1:$((PORT_BASE + 1)))
    ratio=$(awk -v a="$node_ipr" -v b="$redis_ipr" 'BEGIN {printf "%.2f", a / b}')
    cpu_cells=''
    if [ -n "$per_block" ]; then
        cpu_ipr=$(on_this_cpu "$per_block" chordkv "$p")
        cpu_ratio=$(awk -v a="$cpu_ipr" -v b="$redis_ipr" 'BEGIN {printf "%.2f", a / b}')
        cpu_cells=" $cpu_ipr | $cpu_ratio |"
    fi
    rows+=("| $p |$before_cell $node_ipr | $redis_ipr | $ratio |$cpu_cells")
    profiles+=("$p")
done

{
    echo "# Instructions per request"
    echo
    settings="REQUESTS=$REQUESTS"
    [ "$TESTS" = set,get ] || settings="$settings TESTS=$TESTS"
    [ "$PREFILL" = 0 ] || settings="$settings PREFILL=$PREFILL"
    echo "Produced by \`$settings bench/instructions.sh\` at $rev, $(date -u +%Y-%m-%d), release build:"
    echo "one \`chordkv node --resp\` with the default options (memory store, 8 vnodes), as compare-redis.sh's chordkv-1, and one"
    echo "$(redis-server --version | awk '{print $1, $2, $3}'), each under \`valgrind --tool=callgrind --instr-atstart=no\`,"
    if [ "$PREFILL" -gt 0 ]; then
        echo "after \`redis-benchmark -c 50 -n $PREFILL -r 100000 -P 16 -t set\` (not counted), with"
    fi
    echo "collection on only while \`redis-benchmark -c 50 -n $REQUESTS -r 100000 -P P -t $TESTS\` runs;"
    echo "instructions per request = the program's total / $((ntests * REQUESTS)) requests. A fresh process per row."
    echo "SHA-1 runs its portable code under valgrind, so it weighs more here than on the CPU."
    local_head=''
    local_rule=''
    if [ -n "$per_block" ]; then
        echo "This CPU has the SHA extensions, which the node uses (the sha1 crate's \`digest_blocks\`,"
        echo "$per_block instructions a 64-byte block, counted in the binary with \`objdump -d\`): \"on this CPU\" is the"
        echo "chordkv count with the portable block function's instructions (callgrind's inclusive count of"
        echo "\`sha1::compress::compress\`) replaced by $per_block a call (one block a call: the keys are under 56 bytes)."
        local_head=' chordkv on this CPU instr./request | ratio on this CPU |'
        local_rule='---|---|'
    fi
    echo
    if [ -n "$BEFORE_BIN" ]; then
        echo "| -P | chordkv at $BEFORE instr./request | chordkv instr./request | redis-server instr./request | ratio |$local_head"
        echo "|---|---|---|---|---|$local_rule"
    else
        echo "| -P | chordkv instr./request | redis-server instr./request | ratio |$local_head"
        echo "|---|---|---|---|$local_rule"
    fi
    printf '%s\n' "${rows[@]}"
    for p in "${profiles[@]}"; do
        echo
        echo "## chordkv at -P $p: inclusive counts, top $TOP (\`callgrind_annotate --inclusive=yes\`)"
        echo
        echo '```text'
        cat "$work/chordkv-P$p.top"
        echo '```'
    done
} >"$OUT"
cat "$OUT"
