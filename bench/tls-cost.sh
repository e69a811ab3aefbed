#!/usr/bin/env bash
# What TLS for clients costs: one `chordkv node --resp` (memory store) driven by
# redis-benchmark, plain and with TLS (`--tls-cert`/`--tls-key`; redis-benchmark --tls),
# runs interleaved, medians reported.
#
#   bench/tls-cost.sh                       # writes results/tls-cost.md
#
# Environment: REQUESTS (per run, default 100000), REPEATS (default 3), OUT.
#
# Builds the release binary; makes a throwaway CA and node certificate with openssl
# (installing openssl and redis-tools from Debian's packages when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-100000}
REPEATS=${REPEATS:-3}
OUT=${OUT:-results/tls-cost.md}
CLIENTS=50

for tool in openssl redis-benchmark; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl redis-tools >/dev/null
    fi
done
source bench/lib.sh
bench_processes

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -keyout "$work/ca.key" -out "$work/ca.pem" -subj "/CN=chordkv bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$work/node.key" -out "$work/node.csr" -subj "/CN=node" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$work/ext"
openssl x509 -req -in "$work/node.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -days 1 -out "$work/node.pem" -extfile "$work/ext" 2>/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_node MODE RESP_PORT: starts a node (plain or tls) in this shell (so its pid is kept
# and no command substitution waits on its output) and waits until it answers PING.
start_node() {
    local mode=$1 resp=$2 port args=()
    port=$(free_port)
    [ "$mode" = tls ] && args=(--tls-cert "$work/node.pem" --tls-key "$work/node.key")
    "$bin" node --listen "127.0.0.1:$port" --resp "127.0.0.1:$resp" "${args[@]}" >>"$work/node.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 100); do
        if [ "$mode" = tls ]; then
            redis-cli -p "$resp" --tls --cacert "$work/ca.pem" ping >/dev/null 2>&1 && return 0
        else
            redis-cli -p "$resp" ping >/dev/null 2>&1 && return 0
        fi
        sleep 0.1
    done
    echo "the $mode node did not answer PING; its log:" >&2
    cat "$work/node.log" >&2
    exit 1
}

# One redis-benchmark run: prints "set_rps get_rps set_p99_ms get_p99_ms".
bench() {
    local mode=$1 port=$2 tls=()
    [ "$mode" = tls ] && tls=(--tls --cacert "$work/ca.pem")
    timeout 120 redis-benchmark -h 127.0.0.1 -p "$port" "${tls[@]}" -c "$CLIENTS" -n "$REQUESTS" \
        -r 100000 -t set,get --csv 2>/dev/null | python3 -c '
import csv, sys
rows = {r[0]: r for r in csv.reader(sys.stdin)}
s, g = rows["SET"], rows["GET"]
# columns: test, rps, avg, min, p50, p95, p99, max
print(round(float(s[1])), round(float(g[1])), s[6], g[6])'
}

declare -A port results
port[plain]=$(free_port)
port[tls]=$(free_port)
start_node plain "${port[plain]}"
start_node tls "${port[tls]}"
for n in $(seq 1 "$REPEATS"); do
    for mode in plain tls; do
        line=$(bench "$mode" "${port[$mode]}")
        echo "$mode run $n: $line (SET/s GET/s SET p99 ms GET p99 ms)" >&2
        results[$mode]+="$line"$'\n'
    done
done

col() { printf '%s' "${results[$1]}" | awk -v c="$2" '{print $c}' | median; }

{
    echo "# What TLS for clients costs"
    echo
    echo "Produced by \`bench/tls-cost.sh\` (REQUESTS=$REQUESTS REPEATS=$REPEATS) on $(nproc) cores,"
    echo "$(date -u +%Y-%m-%d), at $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes'): one"
    echo "\`chordkv node --resp\` (memory store), \`redis-benchmark -c $CLIENTS -r 100000 -t set,get\`,"
    echo "plain and with \`--tls-cert/--tls-key\` (TLS 1.3, ECDSA P-256, rustls; \`redis-benchmark --tls\`),"
    echo "runs interleaved; medians."
    echo
    echo "| clients | SET/s | GET/s | SET p99 ms | GET p99 ms |"
    echo "|---|---|---|---|---|"
    for mode in plain tls; do
        echo "| $mode | $(col "$mode" 1) | $(col "$mode" 2) | $(col "$mode" 3) | $(col "$mode" 4) |"
    done
    set_ratio=$(awk -v a="$(col tls 1)" -v b="$(col plain 1)" 'BEGIN {printf "%.2f", a/b}')
    get_ratio=$(awk -v a="$(col tls 2)" -v b="$(col plain 2)" 'BEGIN {printf "%.2f", a/b}')
    echo
    echo "TLS throughput as a share of plain: SET $set_ratio, GET $get_ratio."
} >"$OUT"
cat "$OUT"
