#!/usr/bin/env bash
# What virtual nodes cost a process (issue 14 item 1: the measurement behind the default of
# --vnodes). Two measures on local rings of 8 nodes (replicas 2, ack all, memory store):
#
# - idle: CPU the 8 node processes use with no client, over IDLE_S seconds, at the default
#   stabilize period (250 ms) and at 100 ms (the workloads' setting): the maintenance of
#   8 x V ring positions;
# - under load: loadgen's hotkey and uniform workloads (stabilize 100 ms) with `vnodes: V`
#   in the cluster section; throughput and p99 of all operations, medians of REPEATS
#   interleaved runs.
#
#   bench/vnode-cost.sh                        # writes results/balance/vnode-cost.md
#
# Environment: REPEATS (default 3), DURATION (measured seconds, default 10), IDLE_S (default
# 10), VNODES_LIST (default "1 4 8 16"), WORKLOADS (default "hotkey uniform"), OUT. Builds
# the release binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."

REPEATS=${REPEATS:-3}
DURATION=${DURATION:-10}
IDLE_S=${IDLE_S:-10}
VNODES_LIST=${VNODES_LIST:-1 4 8 16}
WORKLOADS=${WORKLOADS:-hotkey uniform}
OUT=${OUT:-results/balance/vnode-cost.md}

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_setup

# idle_cpu V STABILIZE_MS: CPU seconds per second (cores) the nodes of an idle 8-node ring use.
idle_cpu() {
    local v=$1 stabilize=$2 log="$work/cluster-$1-$2.log" pid nodes t0 t1 i
    target/release/chordkv cluster --nodes 8 --vnodes "$v" --replicas 2 --stabilize-ms "$stabilize" \
        --base-port 17300 >"$log" 2>&1 &
    pid=$!
    for i in $(seq 1 120); do
        grep -q '^ready' "$log" && break
        kill -0 "$pid" 2>/dev/null || { echo "the cluster exited:" >&2; tail -5 "$log" >&2; exit 1; }
        sleep 0.5
    done
    grep -q '^ready' "$log" || { echo "the cluster did not start:" >&2; tail -5 "$log" >&2; exit 1; }
    sleep 5
    nodes=$(pgrep -P "$pid" | tr '\n' ' ')
    ticks() { for p in $nodes; do awk '{print $14 + $15}' "/proc/$p/stat"; done | awk '{s+=$1} END {print s}'; }
    t0=$(ticks)
    sleep "$IDLE_S"
    t1=$(ticks)
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    awk -v a="$t0" -v b="$t1" -v hz="$(getconf CLK_TCK)" -v s="$IDLE_S" 'BEGIN {printf "%.3f", (b - a) / hz / s}'
}

declare -A idle
for v in $VNODES_LIST; do
    for stabilize in 250 100; do
        idle[$v-$stabilize]=$(idle_cpu "$v" "$stabilize")
        echo "idle vnodes=$v stabilize=$stabilize: ${idle[$v-$stabilize]} cores" >&2
    done
done

declare -A results
for n in $(seq 1 "$REPEATS"); do
    for workload in $WORKLOADS; do
        for v in $VNODES_LIST; do
            file="$work/$workload-$v.yaml"
            sed -e "s|^cluster:|cluster:\n  vnodes: $v|" "workloads/$workload.yaml" >"$file"
            out="$work/out-$workload-$v-$n"
            run_loadgen "$file" "$out" "$workload, $v vnodes"
            line=$(summary_of "$out" ops_per_s p99_us errors)
            echo "$workload vnodes=$v run $n: $line (ops/s p99-µs errors)" >&2
            results[$workload-$v]+="$line"$'\n'
        done
    done
done

{
    echo "# What virtual nodes cost a process"
    echo
    echo "Produced by \`bench/vnode-cost.sh\` (REPEATS=$REPEATS DURATION=$DURATION IDLE_S=$IDLE_S) on $(nproc) cores,"
    echo "$(date -u +%Y-%m-%d), at $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')."
    echo
    echo "Idle: CPU (cores) of the 8 node processes of \`chordkv cluster --nodes 8 --vnodes V"
    echo "--replicas 2\`, no client, over $IDLE_S s."
    echo
    echo "| vnodes | ring positions | cores, stabilize 250 ms (default) | cores, stabilize 100 ms |"
    echo "|---:|---:|---:|---:|"
    for v in $VNODES_LIST; do
        echo "| $v | $((8 * v)) | ${idle[$v-250]} | ${idle[$v-100]} |"
    done
    echo
    echo "Under load: \`loadgen --workload workloads/W.yaml\` on a fresh local ring of 8 nodes (replicas 2,"
    echo "ack all, stabilize 100 ms, memory store) with \`vnodes\` set in the cluster section. Medians of"
    echo "$REPEATS interleaved runs; errors summed."
    echo
    echo "| workload | vnodes | ops/s | p99 µs | errors | ops/s vs 1 vnode |"
    echo "|---|---:|---:|---:|---:|---:|"
    for workload in $WORKLOADS; do
        base=""
        for v in $VNODES_LIST; do
            rows=$(printf '%s' "${results[$workload-$v]}")
            ops=$(printf '%s\n' "$rows" | column_median 1)
            p99=$(printf '%s\n' "$rows" | column_median 2)
            errors=$(printf '%s\n' "$rows" | column_sum 3)
            [ -n "$base" ] || base=$ops
            ratio=$(awk -v a="$ops" -v b="$base" 'BEGIN {printf "%.2f", a/b}')
            echo "| $workload | $v | $ops | $p99 | $errors | $ratio |"
        done
    done
} >"$OUT"
cat "$OUT"
