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

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_setup

# One run: prints "ops_per_s get_p99_us stale_reads reads_checked lost errors".
run() {
    local from=$1 faults=$2 n=$3
    local file="$work/hot-$from-$faults.yaml"
    sed -e "s|^cluster:|cluster:\n  read_from: $from\n  vnodes: $VNODES|" workloads/hotkey.yaml >"$file"
    if [ "$faults" = pause ]; then
        printf 'faults:\n  - { at_s: %s, action: pause, count: 1, duration_s: 2 }\n' $((DURATION / 2)) >>"$file"
    fi
    local out="$work/out-$from-$faults-$n"
    run_loadgen "$file" "$out" "$from, $faults"
    summary_of "$out" ops_per_s get_p99_us stale_reads reads_checked lost errors
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

{
    echo "# Hot-key reads from the primary or from every copy"
    echo
    echo "Produced by \`bench/hotkey-reads.sh\` (REPEATS=$REPEATS DURATION=$DURATION VNODES=$VNODES) on $(nproc) cores,"
    echo "$(date -u +%Y-%m-%d), at $(revision). Each run is"
    echo "\`loadgen --workload workloads/hotkey.yaml\` (one key, 90% GET / 10% PUT, 8 connections to random"
    echo "entry nodes) on a fresh local ring of 8 nodes, 2 replicas, \`--ack all\`, $VNODES vnodes each, with"
    echo "\`read_from\` set in the cluster section; \"pause\" stops one node for 2 s mid-run. Medians of"
    echo "$REPEATS interleaved runs; stale reads, lost writes and errors summed over the runs."
    echo
    echo "| faults | read from | ops/s | GET p99 µs | stale reads | lost | errors | throughput vs primary |"
    echo "|---|---|---|---|---|---|---|---|"
    for faults in none pause; do
        base=$(printf '%s' "${results[primary-$faults]}" | column_median 1)
        for from in primary replicas; do
            rows=$(printf '%s' "${results[$from-$faults]}")
            ops=$(echo "$rows" | column_median 1)
            p99=$(echo "$rows" | column_median 2)
            stale=$(echo "$rows" | awk '{s+=$3; c+=$4} END {printf "%d of %d", s, c}')
            lost=$(echo "$rows" | column_sum 5)
            errors=$(echo "$rows" | column_sum 6)
            ratio=$(awk -v a="$ops" -v b="$base" 'BEGIN {printf "%.2f", a/b}')
            echo "| $faults | $from | $ops | $p99 | $stale | $lost | $errors | $ratio |"
        done
    done
} >"$OUT"
cat "$OUT"
