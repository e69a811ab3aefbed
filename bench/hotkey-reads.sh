#!/usr/bin/env bash
# What `--read-from replicas` buys on a hot key, and what it costs (issue 14 item 6): the
# hotkey workload (workloads/hotkey.yaml: one key, 90% GET, 10% PUT, 8 connections, entry
# node random) on a fresh local ring of 8 nodes (replicas 2, ack all, VNODES vnodes each),
# reads from the primary against reads from any copy; once without faults and once with one
# node paused for 2 s mid-run (SIGSTOP/SIGCONT), where a copy can miss writes and answer
# stale. Runs interleaved, medians; stale reads and lost writes from loadgen's checker.
#
#   bench/hotkey-reads.sh                       # writes results/balance/hotkey-reads.md
#
# Environment: REPEATS (default 3), DURATION (measured seconds, default 10), VNODES
# (default 16), OUT. Builds the release binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."

REPEATS=${REPEATS:-3}
DURATION=${DURATION:-10}
VNODES=${VNODES:-16}
OUT=${OUT:-results/balance/hotkey-reads.md}

cargo build --release --bins -q
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One run: prints "ops_per_s get_p99_us stale_reads reads_checked lost errors".
run() {
    local from=$1 faults=$2 n=$3
    local file="$work/hot-$from-$faults.yaml"
    sed -e "s|^cluster:|cluster:\n  read_from: $from\n  vnodes: $VNODES|" workloads/hotkey.yaml >"$file"
    if [ "$faults" = pause ]; then
        printf 'faults:\n  - { at_s: %s, action: pause, count: 1, duration_s: 2 }\n' $((DURATION / 2)) >>"$file"
    fi
    local out="$work/out-$from-$faults-$n"
    target/release/loadgen --workload "$file" --duration "$DURATION" --out "$out" --quiet >/dev/null 2>"$out.err" || {
        echo "loadgen failed ($from, $faults):" >&2
        tail -5 "$out.err" >&2
        exit 1
    }
    python3 - "$out/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
g = s["ops"].get("get", s["ops"]["all"])
v = s.get("verify", {})
print(round(s["throughput_ops"]), g["p99_us"], v.get("stale_reads", 0), v.get("reads_checked", v.get("reads", 0)),
      v.get("lost", 0), s["ops"]["all"]["errors"])
PY
}

declare -A results
for faults in none pause; do
    for n in $(seq 1 "$REPEATS"); do
        for from in primary replicas; do
            line=$(run "$from" "$faults" "$n")
            echo "read_from=$from faults=$faults run $n: $line (ops/s get-p99 stale checked lost errors)" >&2
            results[$from-$faults]+="$line"$'\n'
        done
    done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

{
    echo "# Hot-key reads from the primary or from every copy"
    echo
    echo "Produced by \`bench/hotkey-reads.sh\` (REPEATS=$REPEATS DURATION=$DURATION VNODES=$VNODES) on $(nproc) cores,"
    echo "$(date -u +%Y-%m-%d), at $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes'). Each run is"
    echo "\`loadgen --workload workloads/hotkey.yaml\` (one key, 90% GET / 10% PUT, 8 connections to random"
    echo "entry nodes) on a fresh local ring of 8 nodes, 2 replicas, \`--ack all\`, $VNODES vnodes each, with"
    echo "\`read_from\` set in the cluster section; \"pause\" stops one node for 2 s mid-run. Medians of"
    echo "$REPEATS interleaved runs; stale reads, lost writes and errors summed over the runs."
    echo
    echo "| faults | read from | ops/s | GET p99 µs | stale reads | lost | errors | throughput vs primary |"
    echo "|---|---|---|---|---|---|---|---|"
    for faults in none pause; do
        base=$(printf '%s' "${results[primary-$faults]}" | awk '{print $1}' | median)
        for from in primary replicas; do
            rows=$(printf '%s' "${results[$from-$faults]}")
            ops=$(echo "$rows" | awk '{print $1}' | median)
            p99=$(echo "$rows" | awk '{print $2}' | median)
            stale=$(echo "$rows" | awk '{s+=$3; c+=$4} END {printf "%d of %d", s, c}')
            lost=$(echo "$rows" | awk '{s+=$5} END {print s}')
            errors=$(echo "$rows" | awk '{s+=$6} END {print s}')
            ratio=$(awk -v a="$ops" -v b="$base" 'BEGIN {printf "%.2f", a/b}')
            echo "| $faults | $from | $ops | $p99 | $stale | $lost | $errors | $ratio |"
        done
    done
} >"$OUT"
cat "$OUT"
