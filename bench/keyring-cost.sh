#!/usr/bin/env bash
# What the keyring costs: the same loadgen workload on the same local 8-node ring, with the
# nodes started without a keyring and with one (every peer connection authenticated, every
# peer byte sealed with ChaCha20-Poly1305), runs interleaved, medians reported.
#
#   bench/keyring-cost.sh                       # writes results/keyring-cost.md
#
# Environment: WORKLOADS (default "uniform hotkey": files in workloads/), REPEATS (runs per
# setting and workload, default 3), DURATION (measured seconds per run, default 10), OUT.
# Builds the release binaries first. Client traffic is not encrypted in either setting (the
# keyring protects peers; TLS is for clients).
set -euo pipefail
cd "$(dirname "$0")/.."

WORKLOADS=${WORKLOADS:-"uniform hotkey"}
REPEATS=${REPEATS:-3}
DURATION=${DURATION:-10}
OUT=${OUT:-results/keyring-cost.md}

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_setup
target/release/chordkv keygen > "$work/ring.key"
chmod 600 "$work/ring.key"

# One run: prints "ops_per_s p50_us p99_us errors lost".
run() {
    local workload=$1 keyring=$2 n=$3
    local file="$work/$workload-$keyring.yaml"
    cp "workloads/$workload.yaml" "$file"
    if [ "$keyring" = on ]; then
        # The cluster: section takes the node's options; the keyring path is absolute.
        sed -i "s|^cluster:|cluster:\n  keyring: $work/ring.key|" "$file"
    fi
    local out="$work/out-$workload-$keyring-$n"
    run_loadgen "$file" "$out" "$workload, keyring $keyring"
    summary_of "$out" ops_per_s p50_us p99_us errors lost
}

declare -A results
for workload in $WORKLOADS; do
    for n in $(seq 1 "$REPEATS"); do
        for keyring in off on; do
            line=$(run "$workload" "$keyring" "$n")
            echo "$workload keyring=$keyring run $n: $line (ops/s p50 p99 errors lost)" >&2
            results[$workload-$keyring]+="$line"$'\n'
        done
    done
done

{
    echo "# What the keyring costs"
    echo
    echo "Produced by \`bench/keyring-cost.sh\` (WORKLOADS=\"$WORKLOADS\" REPEATS=$REPEATS DURATION=$DURATION)"
    echo "on $(nproc) cores, $(date -u +%Y-%m-%d), at $(revision)."
    echo "Each run is \`loadgen --workload workloads/NAME.yaml\` on a fresh local 8-node ring (2 replicas,"
    echo "\`--ack all\`); \"on\" adds \`keyring: FILE\` to the cluster section, so every connection"
    echo "between nodes is authenticated and sealed. Runs interleaved; medians."
    echo
    echo "| workload | keyring | ops/s | p50 µs | p99 µs | errors | lost | throughput vs off |"
    echo "|---|---|---|---|---|---|---|---|"
    for workload in $WORKLOADS; do
        off_ops=$(printf '%s' "${results[$workload-off]}" | column_median 1)
        for keyring in off on; do
            rows=$(printf '%s' "${results[$workload-$keyring]}")
            ops=$(echo "$rows" | column_median 1)
            p50=$(echo "$rows" | column_median 2)
            p99=$(echo "$rows" | column_median 3)
            errors=$(echo "$rows" | column_sum 4)
            lost=$(echo "$rows" | column_sum 5)
            ratio=$(awk -v a="$ops" -v b="$off_ops" 'BEGIN {printf "%.3f", a/b}')
            echo "| $workload | $keyring | $ops | $p50 | $p99 | $errors | $lost | $ratio |"
        done
    done
} > "$OUT"
cat "$OUT"
