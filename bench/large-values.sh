#!/usr/bin/env bash
# Values up to the default --max-value-bytes (512 MiB, Redis' proto-max-bulk-len), end to end:
# SET with `redis-cli -x` and GET back (sha1 compared) on one redis-server, on one chordkv
# node (memory store, no replicas), and on a ring of 3 (replicas 2), where the key's owner is
# then killed (SIGKILL) and the value read back from each survivor.
#
#   bench/large-values.sh                 # writes results/large-values.md
#
# Environment: SIZES_MIB (default "64 512"), PORT_BASE (default 17300: the ring uses
# PORT_BASE..+2, its RESP ports PORT_BASE+100..+102, the single node and redis-server
# PORT_BASE+200..+202), OUT. Needs about 6 GiB of memory at 512 MiB (three copies, buffers).
# Builds the release binary; installs redis-server and redis-tools when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

SIZES_MIB=${SIZES_MIB:-64 512}
PORT_BASE=${PORT_BASE:-17300}
OUT=${OUT:-results/large-values.md}

need_redis
bench_processes
# Before the report overwrites a tracked file (which would read as a change).
rev=$(revision)

# Seconds a command takes (its output discarded), to the hundredth.
timed() {
    local t0 t1
    t0=$(date +%s%N)
    "$@" >/dev/null
    t1=$(date +%s%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", (b - a) / 1e9}'
}
wait_ready() { for _ in $(seq 200); do grep -q "ready" "$1" && return 0; sleep 0.1; done; echo "not ready: $(cat "$1")" >&2; exit 1; }

rows=()
for mib in $SIZES_MIB; do
    bytes=$((mib * 1024 * 1024))
    head -c "$bytes" /dev/urandom >"$work/v"
    want=$(sha1sum <"$work/v" | cut -c1-40)

    # One redis-server.
    rport=$((PORT_BASE + 202))
    redis-server --port "$rport" --save '' --appendonly no >"$work/redis.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do redis-cli -p "$rport" PING >/dev/null 2>&1 && break; sleep 0.1; done
    set_s=$(timed redis-cli -p "$rport" -x SET big <"$work/v")
    get_s=$(timed sh -c "redis-cli -p $rport GET big | head -c $bytes | sha1sum | cut -c1-40 >$work/got")
    same=$([ "$(cat "$work/got")" = "$want" ] && echo yes || echo NO)
    rows+=("| $mib | redis-server | $set_s | $get_s | $same | |")
    redis-cli -p "$rport" SHUTDOWN NOSAVE >/dev/null 2>&1 || true

    # One chordkv node, memory store, no replicas.
    nport=$((PORT_BASE + 200))
    $bin cluster --nodes 1 --vnodes 1 --replicas 0 --base-port "$nport" --resp-base-port $((nport + 1)) >"$work/one.out" 2>&1 &
    one=$!
    pids+=($one)
    wait_ready "$work/one.out"
    set_s=$(timed redis-cli -p $((nport + 1)) -x SET big <"$work/v")
    get_s=$(timed sh -c "redis-cli -p $((nport + 1)) GET big | head -c $bytes | sha1sum | cut -c1-40 >$work/got")
    same=$([ "$(cat "$work/got")" = "$want" ] && echo yes || echo NO)
    rows+=("| $mib | chordkv, 1 node | $set_s | $get_s | $same | |")
    kill "$one"
    wait "$one" 2>/dev/null || true

    # A ring of 3 with 2 replicas; then the owner is killed.
    $bin cluster --nodes 3 --replicas 2 --base-port "$PORT_BASE" --resp-base-port $((PORT_BASE + 100)) \
        --log-dir "$work/logs" >"$work/ring.out" 2>&1 &
    ring=$!
    pids+=($ring)
    wait_ready "$work/ring.out"
    t0=$(date +%s%N)
    reply=$(redis-cli -p $((PORT_BASE + 100)) -x SET big <"$work/v" 2>&1 | tr -d '\n')
    t1=$(date +%s%N)
    set_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", (b - a) / 1e9}')
    get_s=$(timed sh -c "redis-cli -p $((PORT_BASE + 101)) GET big | head -c $bytes | sha1sum | cut -c1-40 >$work/got")
    same=$([ "$(cat "$work/got")" = "$want" ] && echo yes || echo NO)
    rss=$(ps -o rss= -C chordkv | sort -n | tail -1)
    rows+=("| $mib | chordkv, 3 nodes, replicas 2 | $set_s ($reply) | $get_s | $same | largest node RSS $((rss / 1024)) MiB |")
    owner=""
    for i in 0 1 2; do
        n=$($bin stats --node 127.0.0.1:$((PORT_BASE + i)) | awk '$1 == "keys_primary" {print $2}')
        [ "$n" = "1" ] && owner=$i
    done
    pid=$(ss -ltnp "sport = :$((PORT_BASE + owner))" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
    kill -9 "$pid"
    for i in 0 1 2; do
        [ "$i" = "$owner" ] && continue
        get_s=$(timed sh -c "redis-cli -p $((PORT_BASE + 100 + i)) GET big | head -c $bytes | sha1sum | cut -c1-40 >$work/got")
        same=$([ "$(cat "$work/got")" = "$want" ] && echo yes || echo NO)
        rows+=("| $mib | the same ring, owner node $owner killed, GET via node $i | | $get_s | $same | |")
    done
    kill "$ring"
    wait "$ring" 2>/dev/null || true
done

{
    echo "# Large values"
    echo
    echo "Produced by \`bench/large-values.sh\` (SIZES_MIB=\"$SIZES_MIB\") at $rev, $(date -u +%Y-%m-%d),"
    echo "release build, on $(nproc) cores. SET is \`redis-cli -x SET big < file\` of random bytes (redis-cli"
    echo "reads the file itself, which is much of the time), GET is \`redis-cli GET big\` piped into"
    echo "sha1sum; \"same bytes\" compares that digest with the file's. The ring's owner of \`big\` is"
    echo "the node whose \`keys_primary\` is 1; it is killed with SIGKILL before the last reads."
    echo
    echo "| MiB | target | SET s | GET s | same bytes | notes |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
} >"$OUT"
cat "$OUT"
