#!/usr/bin/env bash
# A/B of two builds on the Redis store, each run on a ring of its own: for each pair, a run of
# BEFORE_BIN and one of this checkout's release `chordkv` (in turn first, ABBA), each on 3 fresh redis-servers and
# a fresh `chordkv cluster --nodes 8 --resp --replicas R --stores ...` (node i in server
# i mod 3, as bench/compare-redis.sh's chordkv-8-redis-rR targets), stopped after the run.
# bench/compare-redis.sh keeps every target up for the whole comparison, so a target is
# measured while another one's anti-entropy (after its writes) loads the shared
# redis-servers; here nothing else runs beside the build measured.
#
#   BEFORE_BIN=/path/to/old/chordkv bench/ab-redis.sh     # writes results/ab-redis.md
#
# Each run: redis-benchmark -c 50 -r KEYS -t set then -t get, with -P 1 (-n KEYS) then -P 16
# (-n 2*KEYS), its requests/s and p99; and, over each GET test, the time redis-server spent
# in scripts (EVALSHA: a get sends none, so these are the ring's background work, the
# anti-entropy scans that follow the writes): a run whose GETs met more of it is slower for
# that reason, not for its read path. Every vnode id is random, so each run's ring is laid
# out differently too: compare medians over PAIRS, and read the spread.
#
# Environment: BEFORE_BIN (required), BEFORE (its name, default "before"), PAIRS (4),
# REPLICAS ("0 2"), KEYS (100000), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

BEFORE_BIN=${BEFORE_BIN:?set BEFORE_BIN to a release chordkv built from the commit to compare with}
BEFORE=${BEFORE:-before}
PAIRS=${PAIRS:-4}
REPLICAS=${REPLICAS:-"0 2"}
KEYS=${KEYS:-100000}
OUT=${OUT:-results/ab-redis.md}
[ -x "$BEFORE_BIN" ] || { echo "ab-redis: $BEFORE_BIN is not an executable" >&2; exit 2; }

need_redis
command -v redis-benchmark >/dev/null 2>&1 || { echo "ab-redis: redis-benchmark (redis-tools) is missing" >&2; exit 2; }
bench_processes
rev=$(revision)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# script_us PORT...: EVALSHA microseconds so far, summed over the servers.
script_us() {
    local p t=0 u
    for p in "$@"; do
        u=$(redis-cli -p "$p" INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:.*,usec=\([0-9]*\),.*/\1/p')
        t=$((t + ${u:-0}))
    done
    echo "$t"
}

# run LABEL BIN R: one ring; appends "label r P test rps p99_ms script_ms" lines to $work/rows.
run() {
    local label=$1 b=$2 r=$3 ports=() stores=() p i
    for i in 0 1 2; do
        p=$(free_port)
        redis-server --port "$p" --save '' --appendonly no >"$work/redis-$p.log" 2>&1 &
        pids+=($!)
        ports+=("$p")
        stores+=("redis://127.0.0.1:$p/0")
    done
    for p in "${ports[@]}"; do
        for _ in $(seq 100); do redis-cli -p "$p" PING >/dev/null 2>&1 && break; sleep 0.1; done
    done
    local name="$label-r$r"
    "$b" cluster --nodes 8 --resp --replicas "$r" --stores "${stores[@]}" >"$work/$name.out" 2>"$work/$name.err" &
    local launcher=$!
    pids+=("$launcher")
    for _ in $(seq 1200); do grep -q '^ready: ' "$work/$name.out" && break; sleep 0.1; done
    grep -q '^ready: ' "$work/$name.out" || { echo "ab-redis: $name: the ring did not form: $(tail -3 "$work/$name.err")" >&2; exit 1; }
    local port
    port=$(sed -n 's/^resp: \([^ ]*\).*/\1/p' "$work/$name.out" | sed 's/.*://')
    local pl n t before after line
    for pl in 1 16; do
        n=$KEYS
        [ "$pl" = 16 ] && n=$((2 * KEYS))
        for t in set get; do
            before=$(script_us "${ports[@]}")
            line=$(timeout 600 redis-benchmark -h 127.0.0.1 -p "$port" -c 50 -n "$n" -r "$KEYS" -P "$pl" -t "$t" --csv | tail -1 | tr -d '"')
            after=$(script_us "${ports[@]}")
            # "TEST,rps,avg,min,p50,p95,p99,max"
            echo "$label $r $pl ${t^^} $(echo "$line" | cut -d, -f2) $(echo "$line" | cut -d, -f7) $(((after - before) / 1000))" >>"$work/rows"
        done
    done
    kill -INT "$launcher" 2>/dev/null || true
    wait "$launcher" 2>/dev/null || true
    for p in "${ports[@]}"; do redis-cli -p "$p" SHUTDOWN NOSAVE >/dev/null 2>&1 || true; done
    wait 2>/dev/null || true
    echo "ab-redis: $name done" >&2
}

: >"$work/rows"
for r in $REPLICAS; do
    for k in $(seq "$PAIRS"); do
        # ABBA: the order alternates, so a load that rises or falls through the runs weighs on
        # both builds alike.
        if [ $((k % 2)) = 1 ]; then
            run "$BEFORE" "$BEFORE_BIN" "$r"
            run "$rev" "$bin" "$r"
        else
            run "$rev" "$bin" "$r"
            run "$BEFORE" "$BEFORE_BIN" "$r"
        fi
    done
done

{
    echo "# A/B on the Redis store: $BEFORE against $rev"
    echo
    echo "Produced by \`BEFORE=$BEFORE BEFORE_BIN=... PAIRS=$PAIRS REPLICAS=\"$REPLICAS\" KEYS=$KEYS bench/ab-redis.sh\` at $rev,"
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), on $(nproc) cores; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "Each run: 3 fresh redis-servers and \`chordkv cluster --nodes 8 --resp --replicas R --stores ...\`,"
    echo "alone on the machine, then \`redis-benchmark -c 50 -r $KEYS -P P -t set\` and \`-t get\` (-n $KEYS at"
    echo "-P 1, $((2 * KEYS)) at -P 16); runs of the two builds alternate, in ABBA order. Requests/s: median of $PAIRS runs and"
    echo "their range; p99 in ms, median; scripts: the redis-servers' EVALSHA time during the test, ms,"
    echo "median (during GETs, the ring's background work only: gets send no script)."
    echo
    echo "| replicas | -P | test | build | requests/s | range | p99 ms | scripts ms | vs $BEFORE |"
    echo "|---:|---:|---|---|---:|---|---:|---:|---:|"
    for r in $REPLICAS; do
        for pl in 1 16; do
            for t in SET GET; do
                base_rps=""
                for label in "$BEFORE" "$rev"; do
                    rows=$(awk -v l="$label" -v r="$r" -v p="$pl" -v t="$t" '$1 == l && $2 == r && $3 == p && $4 == t' "$work/rows")
                    rps=$(printf '%s\n' "$rows" | column_median 5)
                    lo=$(printf '%s\n' "$rows" | awk '{print $5}' | sort -n | head -1)
                    hi=$(printf '%s\n' "$rows" | awk '{print $5}' | sort -n | tail -1)
                    p99=$(printf '%s\n' "$rows" | column_median 6)
                    sms=$(printf '%s\n' "$rows" | column_median 7)
                    ratio="-"
                    if [ -z "$base_rps" ]; then base_rps=$rps; else ratio=$(awk -v a="$rps" -v b="$base_rps" 'BEGIN {printf "%.2f", a / b}'); fi
                    echo "| $r | $pl | $t | $label | $(printf '%.0f' "$rps") | $(printf '%.0f' "$lo")-$(printf '%.0f' "$hi") | $p99 | $sms | $ratio |"
                done
            done
        done
    done
    echo
    echo "Every run: build replicas P test requests/s p99_ms scripts_ms"
    echo
    echo '```text'
    cat "$work/rows"
    echo '```'
} >"$OUT"
cat "$OUT"
