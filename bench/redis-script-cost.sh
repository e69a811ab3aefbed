#!/usr/bin/env bash
# What redis-server spends on the Redis driver's calls against the plain commands twemproxy
# sends, in instructions per key (valgrind's callgrind, so the figures do not depend on how
# busy the machine is). For each shape (namespaces per call x keys per namespace: a node's
# vnodes are namespaces, and one pipelined call carries the puts, or the gets, of every vnode
# that had some), a fresh redis-server is filled with 100,000 keys (16-byte keys, 3-byte values,
# 8 namespaces), sent one pass of the calls unmeasured, then one measured pass of another
# random draw, replayed with `redis-cli --pipe` (bench/redis-script-cost.py writes them):
#
#   puts   EVALSHA of the driver's LUA_PUTS (every key's record replaced by a newer version)
#   watched  the driver's puts in a pipeline without reads (server/src/store/redis/watched.rs):
#          WATCH, EXISTS of the markers, HMGET per namespace; MULTI, HSET per namespace, EXEC
#   empty  EVALSHA of `return 1` with the same keys and arguments: what a script call costs
#          before its first line runs
#   set    a plain SET of each key
#   gets   the driver's reads: HMGET, then EXISTS of the marker, per namespace
#   gets-multi  the same in one MULTI ... EXEC (marker check first), as the driver sent them
#          before 2026-12-05
#   get    a plain GET of each key
#   set-new, puts-new, watched-new   SET and the driver's puts of keys never written (the driver adds each to
#          its namespace's index: a bulk load, or the keys a handoff brings to a new node)
#
#   bench/redis-script-cost.sh           # writes results/redis-script-cost.md
#
# Environment: KEYS_MEASURED (keys per measured pass, default 8000), SHAPES (default
# "1x1 2x1 2x4 8x8"), PORT_BASE (default 17700), OUT, DRIVER_SOURCE (the file the scripts are
# read from, default server/src/store/redis/mod.rs; e.g. another revision's, from `git show
# REV:server/src/store/redis/mod.rs`, for a before and after).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

KEYS_MEASURED=${KEYS_MEASURED:-8000}
SHAPES=${SHAPES:-"1x1 2x1 2x4 8x8"}
PORT_BASE=${PORT_BASE:-17700}
OUT=${OUT:-results/redis-script-cost.md}

need_redis
command -v valgrind >/dev/null 2>&1 || env DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null
command -v python3 >/dev/null 2>&1 || env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 >/dev/null
rev=$(git rev-parse --short HEAD)
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

python3 bench/redis-script-cost.py populate "$work/populate.resp"

# count KIND GROUPS ENTRIES PORT: instructions per key of KIND's measured pass; also writes
# the replay's reply counts to $work/KIND-GxE.pipe.
count() {
    local kind=$1 groups=$2 entries=$3 port=$4
    local name="$kind-${groups}x$entries"
    local calls=$((KEYS_MEASURED / (groups * entries)))
    python3 bench/redis-script-cost.py "$kind" "$calls" "$groups" "$entries" 1 "$work/$name.warm.resp"
    python3 bench/redis-script-cost.py "$kind" "$calls" "$groups" "$entries" 2 "$work/$name.resp"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/$name.cg" \
        redis-server --port "$port" --save '' --appendonly no >"$work/$name.log" 2>&1 &
    local vpid=$!
    pids+=($vpid)
    for _ in $(seq 600); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -p "$port" --pipe <"$work/populate.resp" >"$work/$name.populate" 2>&1
    redis-cli -p "$port" --pipe <"$work/$name.warm.resp" >"$work/$name.warm" 2>&1
    callgrind_control -i on "$vpid" >/dev/null 2>&1
    redis-cli -p "$port" --pipe <"$work/$name.resp" >"$work/$name.pipe" 2>&1
    callgrind_control -i off "$vpid" >/dev/null 2>&1
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    wait "$vpid" 2>/dev/null || true
    for f in populate warm pipe; do
        if ! grep -q "errors: 0," "$work/$name.$f"; then
            echo "redis-script-cost: $name: the $f pass got error replies:" >&2
            cat "$work/$name.$f" >&2
            exit 1
        fi
    done
    local total
    total=$(callgrind_annotate "$work/$name.cg" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    awk -v t="$total" -v n="$((calls * groups * entries))" 'BEGIN {printf "%.0f", t / n}'
}

rows=()
for shape in $SHAPES; do
    g=${shape%x*} e=${shape#*x}
    declare -A per=()
    port=$PORT_BASE
    for kind in set puts watched empty set-new puts-new watched-new get gets gets-multi; do
        per[$kind]=$(count "$kind" "$g" "$e" "$port")
        port=$((port + 1))
    done
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", a / b}'; }
    rows+=("| $g x $e | ${per[set]} | ${per[empty]} | ${per[puts]} | $(ratio "${per[puts]}" "${per[set]}") | ${per[watched]} | $(ratio "${per[watched]}" "${per[set]}") | ${per[set-new]} | ${per[puts-new]} | $(ratio "${per[puts-new]}" "${per[set-new]}") | ${per[watched-new]} | $(ratio "${per[watched-new]}" "${per[set-new]}") | ${per[get]} | ${per[gets]} | $(ratio "${per[gets]}" "${per[get]}") | ${per[gets-multi]} | $(ratio "${per[gets-multi]}" "${per[get]}") |")
done

{
    echo "# What redis-server spends on the Redis driver's calls"
    echo
    echo "Produced by \`KEYS_MEASURED=$KEYS_MEASURED SHAPES=\"$SHAPES\" bench/redis-script-cost.sh\` at $rev, $(date -u +%Y-%m-%d);"
    echo "$(redis-server --version | awk '{print $1, $2, $3}'), under \`valgrind --tool=callgrind --instr-atstart=no\`,"
    echo "collection on only while the measured pass is replayed with \`redis-cli --pipe\` (a fresh server per"
    echo "cell, 100,000 keys of 16 bytes with 3-byte values in 8 namespaces written first, then an unmeasured"
    echo "pass). Instructions of the whole server (reading, parsing, running, replying) per key of the"
    echo "measured pass ($KEYS_MEASURED keys). Shape: namespaces in a call x keys per namespace (a node's"
    echo "vnodes are its namespaces; the calls per request in results/compare-redis.md's \"Where"
    echo "redis-server's time goes\" give the shapes of a benchmark's calls: few keys a call at -P 1,"
    echo "tens at -P 16). A SET or GET is what twemproxy sends for each request; the driver's puts are"
    echo "atomic compare-and-set merges by version (a paused or restarted process writing late must not"
    echo "replace a newer record), which Redis 7.0 runs only as a script: the \"return 1\" column is what"
    echo "a script call costs redis-server before it does anything. A pipeline of puts only goes without a"
    echo "script (\`watched\`: the records read under \`WATCH\`, merged by the node, written in one"
    echo "\`MULTI\` ... \`EXEC\` that Redis runs only if nothing watched changed): the \"transaction\" columns."
    echo
    echo "| shape | SET | EVALSHA of \`return 1\`, same arguments | driver's puts (LUA_PUTS) | puts / SET | puts as a transaction (watched) | / SET | SET, new key | puts, new key | / SET | transaction, new key | / SET | GET | driver's gets (HMGET, EXISTS) | gets / GET | in a transaction (MULTI, EXISTS, HMGET, EXEC) | / GET |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
} >"$OUT"
cat "$OUT"
