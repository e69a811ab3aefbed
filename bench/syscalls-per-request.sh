#!/usr/bin/env bash
# Where a routed request's CPU goes, user against kernel, and how many system calls it takes:
# twemproxy over 3 redis-servers against 8 chordkv nodes with the memory store and
# --replicas 0 (one copy of each key, as twemproxy keeps), redis-benchmark connected to
# twemproxy or to node 0. For each target and pipeline depth, over one run of
# `redis-benchmark -c 50 -n REQUESTS -r 100000 -P P -t set,get` (after a warm-up):
#
#   user, system  CPU microseconds a request of all the target's processes (twemproxy and its
#                 3 redis-servers; the 8 nodes), from utime and stime in /proc/PID/stat
#   calls         system calls a request of those processes, by kind (perf's syscalls:
#                 tracepoints; reads are read + recvfrom, writes write + writev + sendto)
#   per read      requests a read system call carries on the hop behind the entry process
#                 (twemproxy to its servers, node 0 to the owners): the requests forwarded
#                 over the reads of the processes behind it
#
#   bench/syscalls-per-request.sh                 # writes results/syscalls-per-request.md
#
# Environment: REQUESTS (default 200000), DEPTHS (default "1 16"), OUT. Needs perf
# (Debian's linux-perf, installed if missing), redis-tools, redis-server and nutcracker;
# run as root (perf attaches to the processes).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
REQUESTS=${REQUESTS:-200000}
DEPTHS=${DEPTHS:-1 16}
OUT=${OUT:-results/syscalls-per-request.md}
need_redis
missing=()
command -v nutcracker >/dev/null 2>&1 || missing+=(nutcracker)
command -v perf >/dev/null 2>&1 || missing+=(linux-perf)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
if [ ${#missing[@]} -gt 0 ]; then
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
bench_processes

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# cpu PIDS: user and system clock ticks of the processes, summed.
cpu() { for p in $1; do awk '{print $14, $15}' "/proc/$p/stat"; done | awk '{u+=$1; s+=$2} END {print u, s}'; }

# measure LABEL PORT ENTRY_PID "PIDS" P: one table row.
measure() {
    local label=$1 port=$2 entry=$3 all=$4 p=$5
    redis-benchmark -p "$port" -c 50 -n 20000 -r 100000 -P "$p" -t set,get -q >/dev/null 2>&1
    local events=syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_ctl
    local behind
    behind=$(for q in $all; do [ "$q" = "$entry" ] || echo "$q"; done | paste -sd,)
    local before
    before=$(cpu "$all")
    perf stat -x, -e "$events" -p "$(echo $all | tr ' ' ',')" -o "$work/all.csv" &
    local perf_all=$!
    perf stat -x, -e syscalls:sys_enter_read,syscalls:sys_enter_recvfrom -p "$behind" -o "$work/behind.csv" &
    local perf_behind=$!
    sleep 1
    redis-benchmark -p "$port" -c 50 -n "$REQUESTS" -r 100000 -P "$p" -t set,get --csv >"$work/bench.csv" 2>/dev/null
    kill -INT "$perf_all" "$perf_behind"
    wait "$perf_all" "$perf_behind" || true
    local after
    after=$(cpu "$all")
    local n=$((2 * REQUESTS)) hz
    hz=$(getconf CLK_TCK)
    local set get
    set=$(grep '^"SET"' "$work/bench.csv" | cut -d, -f2 | tr -d '"')
    get=$(grep '^"GET"' "$work/bench.csv" | cut -d, -f2 | tr -d '"')
    count() { awk -F, -v e="$2" '$3 ~ e {s+=$1} END {print s+0}' "$1"; }
    local reads writes waits ctls behind_reads
    reads=$(($(count "$work/all.csv" 'sys_enter_read$') + $(count "$work/all.csv" 'sys_enter_recvfrom$')))
    writes=$(($(count "$work/all.csv" 'sys_enter_write$') + $(count "$work/all.csv" 'sys_enter_writev$') + $(count "$work/all.csv" 'sys_enter_sendto$')))
    waits=$(count "$work/all.csv" 'sys_enter_epoll_wait$')
    ctls=$(count "$work/all.csv" 'sys_enter_epoll_ctl$')
    behind_reads=$(($(count "$work/behind.csv" 'sys_enter_read$') + $(count "$work/behind.csv" 'sys_enter_recvfrom$')))
    # Requests forwarded behind the entry: all of twemproxy's, 7/8 of node 0's (it serves the
    # keys it owns itself).
    local forwarded=$n
    [ "$label" = chordkv-8-r0 ] && forwarded=$((n * 7 / 8))
    read -r u0 s0 <<<"$before"
    read -r u1 s1 <<<"$after"
    awk -v l="$label" -v p="$p" -v set="$set" -v get="$get" -v u=$((u1 - u0)) -v s=$((s1 - s0)) \
        -v hz="$hz" -v n="$n" -v r="$reads" -v w="$writes" -v wt="$waits" -v c="$ctls" \
        -v br="$behind_reads" -v f="$forwarded" 'BEGIN {
        printf "| %s | %s | %.0f | %.0f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f |\n",
            l, p, set, get, u * 1e6 / hz / n, s * 1e6 / hz / n, r / n, w / n, wt / n, c / n,
            (r + w + wt + c) / n, (br > 0 ? f / br : 0) }'
}

rows=()
for p in $DEPTHS; do
    # twemproxy over 3 redis-servers (as bench/compare-redis.sh starts them).
    rp=()
    for _ in 1 2 3; do
        port=$(free_port)
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
        pids+=($!)
        rp+=("$port:$!")
    done
    tw=$(free_port)
    {
        echo "compare:"
        echo "  listen: 127.0.0.1:$tw"
        echo "  hash: fnv1a_64"
        echo "  distribution: ketama"
        echo "  redis: true"
        echo "  auto_eject_hosts: false"
        echo "  servers:"
        for x in "${rp[@]}"; do echo "   - 127.0.0.1:${x%%:*}:1"; done
    } >"$work/nutcracker.yml"
    nutcracker -c "$work/nutcracker.yml" -a 127.0.0.1 -s "$(free_port)" -o "$work/nutcracker.log" &
    nc=$!
    pids+=($nc)
    for _ in $(seq 200); do
        [ "$(redis-cli -p "$tw" SET probe 1 2>/dev/null)" = OK ] && break
        sleep 0.05
    done
    rows+=("$(measure twemproxy "$tw" "$nc" "$nc $(for x in "${rp[@]}"; do echo -n "${x##*:} "; done)" "$p")")
    kill "$nc" "${rp[@]##*:}" 2>/dev/null || true
    wait "$nc" "${rp[@]##*:}" 2>/dev/null || true

    # 8 chordkv nodes, memory store, --replicas 0.
    "$bin" cluster --nodes 8 --resp --replicas 0 --log-dir "$work/logs" >"$work/cluster.out" 2>"$work/cluster.err" &
    cl=$!
    pids+=($cl)
    for _ in $(seq 1200); do grep -q '^ready: ' "$work/cluster.out" && break; sleep 0.1; done
    grep -q '^ready: ' "$work/cluster.out" || { cat "$work/cluster.err" >&2; exit 1; }
    resp=$(sed -n 's/^resp: \([^ ,]*\).*/\1/p' "$work/cluster.out")
    nodes=$(pgrep -P "$cl" | paste -sd' ')
    first=$(pgrep -P "$cl" | head -1)
    rows+=("$(measure chordkv-8-r0 "${resp##*:}" "$first" "$nodes" "$p")")
    kill "$cl"
    wait "$cl" 2>/dev/null || true
    rm -rf "$work/logs"
done

{
    echo "# User and system CPU and system calls of a routed request: twemproxy against chordkv"
    echo
    echo "Produced by \`bench/syscalls-per-request.sh\` (REQUESTS=$REQUESTS) on $(date -u '+%Y-%m-%d %H:%M UTC'); chordkv built"
    echo "from commit \`$(revision)\`; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "One run per row of \`redis-benchmark -c 50 -n $REQUESTS -r 100000 -P P -t set,get\` against"
    echo "twemproxy (over 3 redis-servers) or node 0 of 8 chordkv nodes (memory store, --replicas 0),"
    echo "after a warm-up. CPU and calls are those of all the target's processes (twemproxy and its"
    echo "servers; the 8 nodes), a request being one SET or GET. Reads: read + recvfrom; writes:"
    echo "write + writev + sendto. \"Per read behind\": requests forwarded behind the entry process"
    echo "over the read calls of the processes behind it (twemproxy's servers; the 7 owners), how"
    echo "many requests one read carries on that hop. The machine is shared: compare within a run."
    echo
    echo "| target | -P | SET/s | GET/s | user us | system us | reads | writes | epoll_wait | epoll_ctl | calls | per read behind |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
} >"$OUT"
cat "$OUT"
