#!/usr/bin/env bash
# chordkv side by side with redis-server, a 3-master Redis Cluster and twemproxy over 3
# redis-servers, all driven by the same redis-benchmark commands, in one run on this machine.
#
#   bench/compare-redis.sh                       # writes results/compare-redis.md
#
# Targets (all on 127.0.0.1, free ports):
#   redis          one redis-server
#   redis-cluster  3 redis-server masters (--cluster-enabled), `redis-cli --cluster create`;
#                  redis-benchmark --cluster
#   twemproxy      nutcracker (ketama) in front of 3 redis-servers
#   chordkv-1      one `chordkv node --resp` (memory store)
#   chordkv-8      `chordkv cluster --nodes 8 --resp` (memory store, 2 replicas, ack all);
#                  redis-benchmark talks to node 0, which routes every request
#   chordkv-8-r0   8 nodes, memory store, --replicas 0: one copy per key, as twemproxy keeps
#   chordkv-8-redis-r0  8 nodes keeping their keys in the 3 redis-servers twemproxy uses (node i
#                  in server i mod 3: `chordkv cluster --stores`), --replicas 0: twemproxy's work
#                  plus chordkv's routing
#   chordkv-8-redis-r2  the same with --replicas 2 (every SET stored 3 times before its reply)
#
# Each target gets `redis-benchmark -c 50 -r 100000 -t set` then `-t get`, without pipelining
# and with -P 16, REPEATS times (targets interleaved, so a noisy moment does not hit one target only;
# in the given order on odd repeats, reversed on even ones);
# the report gives the medians of requests/s, p50 and p99 and the ratios to redis-server and
# to twemproxy. Every run also reads the CPU time (utime + stime) and the context switches of
# every thread of every process it started, and of redis-benchmark, from /proc before and after
# (bench/proc-cpu.py): the report gives CPU microseconds per request for each kind of process
# (a node's event loop, its store pipeline worker, its other store workers, redis-server,
# twemproxy, redis-benchmark) and context switches per request, medians over the repeats. On a
# machine where the benchmark saturates the cores, requests/s is about 1 / (CPU per request),
# and CPU per request hardly depends on what else runs on the machine ("rest of the machine":
# CPU used by processes this run did not start). From those figures the report computes the
# ceiling of each chordkv-8-redis target's ratio to twemproxy (`proc-cpu.py ceiling`: the memory
# store's ring plus a plain command's redis-server cost per copy), and for the targets over
# twemproxy's 3 redis-servers it sums their INFO commandstats over each run (CONFIG RESETSTAT
# before it): calls and command time per request. With PROFILE=1 (default) chordkv-1 is then run
# under valgrind's callgrind for a short redis-benchmark load and the top functions are appended.
#
# Environment: REQUESTS (per plain run, default 100000), PIPELINED_REQUESTS (per -P 16 run,
# default 200000), REPEATS (default 3), RUN_TIMEOUT_S (bound of one redis-benchmark run,
# default 120), PROFILE (1/0), TARGETS (the targets to run, space-separated; default all, e.g.
# TARGETS="twemproxy chordkv-8-redis-r0 chordkv-8-redis-r2"), CHORDKV_BIN (default: build
# target/release/chordkv), CHORDKV_REV (what the report says the binary was built from;
# default: the work tree), OUT, BINS (other chordkv binaries, `NAME=PATH ...`: a target
# `chordkv-...@NAME` in TARGETS runs that one, interleaved with the others, for a comparison
# of two builds that the machine's load hits alike, e.g. BINS="base=/tmp/old/chordkv"
# TARGETS="twemproxy chordkv-8-redis-r0@base chordkv-8-redis-r0").
#
# Installs what it lacks from Debian's packages (redis-server, redis-tools, nutcracker,
# valgrind) and stops everything it started on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-100000}
PIPELINED_REQUESTS=${PIPELINED_REQUESTS:-200000}
REPEATS=${REPEATS:-3}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-120}
PROFILE=${PROFILE:-1}
OUT=${OUT:-results/compare-redis.md}
CLIENTS=50
KEYSPACE=100000
PIPELINE=16
COMMAND_LINE="bench/compare-redis.sh"
ALL_TARGETS=(redis redis-cluster twemproxy chordkv-1 chordkv-8 chordkv-8-r0 chordkv-8-redis-r0 chordkv-8-redis-r2)
read -ra TARGETS <<<"${TARGETS:-${ALL_TARGETS[*]}}"
declare -A BIN_OF=()
for b in ${BINS:-}; do BIN_OF[${b%%=*}]=${b#*=}; done
for t in "${TARGETS[@]}"; do
    case " ${ALL_TARGETS[*]} " in *" ${t%@*} "*) ;; *) echo "compare-redis: unknown target '$t' (known: ${ALL_TARGETS[*]})" >&2; exit 2 ;; esac
    if [ "$t" != "${t%@*}" ]; then
        case "$t" in chordkv-1@* | chordkv-8*) ;; *) echo "compare-redis: only the chordkv targets take a binary: '$t'" >&2; exit 2 ;; esac
        [ -n "${BIN_OF[${t#*@}]:-}" ] || { echo "compare-redis: '$t' names no binary of BINS" >&2; exit 2; }
    fi
done
if [ -n "${BINS:-}" ]; then
    COMMAND_LINE="BINS=\"${BINS}\" $COMMAND_LINE"
fi
for v in REQUESTS PIPELINED_REQUESTS REPEATS PROFILE; do
    COMMAND_LINE="$v=${!v} $COMMAND_LINE"
done
if [ "${TARGETS[*]}" != "${ALL_TARGETS[*]}" ]; then
    COMMAND_LINE="TARGETS=\"${TARGETS[*]}\" $COMMAND_LINE"
fi
wanted() { # target...: whether any of them runs (with any binary)
    local t u
    for t in "$@"; do
        for u in "${TARGETS[@]}"; do
            [ "${u%@*}" = "$t" ] && return 0
        done
    done
    return 1
}

log() { echo "compare-redis: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- what we need -------------------------------------------------------------------------

apt_install() {
    local as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "cannot install $*: not root and no sudo"
        as_root=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || die "cannot install $*: no apt-get"
    if ! apt-cache show "$@" >/dev/null 2>&1; then
        ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -q
    fi
    for p in "$@"; do
        apt-cache show "$p" >/dev/null 2>&1 ||
            die "Debian package '$p' is not in this machine's package lists; install it by hand (nothing is built from outside)"
    done
    ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
command -v nutcracker >/dev/null 2>&1 || missing+=(nutcracker)
if [ "$PROFILE" = 1 ]; then
    command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
fi
if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing ${missing[*]} with apt-get"
    apt_install "${missing[@]}"
fi

if [ -z "${CHORDKV_BIN:-}" ]; then
    log "building chordkv (release)"
    cargo build --release -q -p chordkv --bin chordkv
    CHORDKV_BIN=target/release/chordkv
fi
[ -x "$CHORDKV_BIN" ] || die "no chordkv binary at $CHORDKV_BIN"

# ---- processes and ports ------------------------------------------------------------------

WORK=$(mktemp -d /tmp/compare-redis.XXXXXX)
PIDS=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

USED_PORTS=" "
# Ports are picked below the kernel's ephemeral range, so that no outgoing connection holds
# one; a server that still fails to bind is started again on another port.
read -r EPHEMERAL_LOW _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPHEMERAL_LOW=32768
PORT_LOW=10000
[ "$EPHEMERAL_LOW" -gt $((PORT_LOW + 5000)) ] || PORT_LOW=1024
# free_port VAR: a loopback port nothing listens on and that this run has not handed out yet,
# stored in VAR (not printed: a $(...) subshell would lose the record of ports handed out).
free_port() {
    local _fp
    while :; do
        _fp=$((PORT_LOW + (RANDOM * 32768 + RANDOM) % (EPHEMERAL_LOW - PORT_LOW)))
        case "$USED_PORTS" in *" $_fp "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$_fp") 2>/dev/null; then
            USED_PORTS="$USED_PORTS$_fp "
            printf -v "$1" '%s' "$_fp"
            return
        fi
    done
}

wait_ping() { # port [what] [pid]: waits up to 60 s; false if the process `pid` exits first
    for _ in $(seq 600); do
        [ "$(redis-cli -p "$1" PING 2>/dev/null)" = PONG ] && return 0
        if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then
            return 1
        fi
        sleep 0.1
    done
    die "${2:-port $1} does not answer PING"
}

# start_redis VAR [extra args...]: a redis-server on a free port, stored in VAR.
start_redis() {
    local var=$1 port attempt
    shift
    for attempt in 1 2 3 4 5; do
        free_port port
        redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
            --dir "$WORK" --dbfilename "dump-$port.rdb" "$@" >"$WORK/redis-$port.log" 2>&1 &
        PIDS+=($!)
        if wait_ping "$port" "redis-server on $port" "$!"; then
            printf -v "$var" '%s' "$port"
            LABELED+=("redis=$!")
            return
        fi
        log "redis-server on $port exited (attempt $attempt): $(tail -1 "$WORK/redis-$port.log")"
    done
    die "redis-server did not start"
}

declare -A PORT EXTRA
# label=pid of every process started, for bench/proc-cpu.py.
LABELED=()
# Requests of a target's runs are divided by this, so that every run takes seconds (none is
# that slow now).
declare -A SLOWDOWN=()

log "work directory $WORK"

other_listen='' other_resp='' redis_port='' p='' tw_port='' tw_stats_port='' ck1='' ck1_resp='' prof_node='' prof_resp=''

# redis
if wanted redis; then
    start_redis redis_port
    PORT[redis]=$redis_port
fi

# Redis Cluster: 3 masters, no replicas.
if wanted redis-cluster; then
rc_ports=()
for i in 1 2 3; do
    start_redis p --cluster-enabled yes --cluster-config-file "$WORK/nodes-$i.conf" \
        --cluster-node-timeout 5000
    rc_ports+=("$p")
done
rc_addrs=()
for p in "${rc_ports[@]}"; do rc_addrs+=("127.0.0.1:$p"); done
redis-cli --cluster create "${rc_addrs[@]}" --cluster-replicas 0 \
    --cluster-yes >"$WORK/cluster-create.log" 2>&1 || die "redis-cli --cluster create failed: $(tail -5 "$WORK/cluster-create.log")"
for _ in $(seq 200); do
    redis-cli -p "${rc_ports[0]}" CLUSTER INFO 2>/dev/null | grep -q 'cluster_state:ok' && break
    sleep 0.1
done
redis-cli -p "${rc_ports[0]}" CLUSTER INFO | grep -q 'cluster_state:ok' || die "Redis Cluster not ok"
PORT[redis-cluster]=${rc_ports[0]}
EXTRA[redis-cluster]="--cluster"
fi

# twemproxy over 3 redis-servers; the chordkv-8-redis targets keep their keys in the same 3.
tw_ports=()
if wanted twemproxy chordkv-8-redis-r0 chordkv-8-redis-r2; then
    for _ in 1 2 3; do
        start_redis p
        tw_ports+=("$p")
    done
fi
if wanted twemproxy; then
free_port tw_port
PORT[twemproxy]=$tw_port
{
    echo "compare:"
    echo "  listen: 127.0.0.1:${PORT[twemproxy]}"
    echo "  hash: fnv1a_64"
    echo "  distribution: ketama"
    echo "  redis: true"
    echo "  auto_eject_hosts: false"
    echo "  servers:"
    for p in "${tw_ports[@]}"; do echo "   - 127.0.0.1:$p:1"; done
} >"$WORK/nutcracker.yml"
free_port tw_stats_port
nutcracker -c "$WORK/nutcracker.yml" -a 127.0.0.1 -s "$tw_stats_port" -o "$WORK/nutcracker.log" &
PIDS+=($!)
LABELED+=("twemproxy=$!")
# twemproxy answers no PING of its own: a SET through it shows the backends are reached.
for _ in $(seq 200); do
    [ "$(redis-cli -p "${PORT[twemproxy]}" SET compare:probe 1 2>/dev/null)" = OK ] && break
    sleep 0.05
done
[ "$(redis-cli -p "${PORT[twemproxy]}" SET compare:probe 1 2>/dev/null)" = OK ] || die "twemproxy does not answer"
fi

# chordkv-1 (also the profiled one)
if wanted chordkv-1 || [ "$PROFILE" = 1 ]; then
free_port ck1
free_port ck1_resp
PORT[chordkv-1]=$ck1_resp
"$CHORDKV_BIN" node --listen "127.0.0.1:$ck1" --resp "127.0.0.1:${PORT[chordkv-1]}" \
    >"$WORK/chordkv-1.log" 2>&1 &
PIDS+=($!)
CK1_PID=$!
LABELED+=("node:chordkv-1=$!")
wait_ping "${PORT[chordkv-1]}" "chordkv-1" "$CK1_PID" || die "chordkv-1 exited: $(tail -3 "$WORK/chordkv-1.log")"
fi
# chordkv-1@NAME: the same single node, run from the binary NAME of BINS.
for t in "${TARGETS[@]}"; do
    case "$t" in chordkv-1@*) ;; *) continue ;; esac
    free_port other_listen
    free_port other_resp
    PORT[$t]=$other_resp
    "${BIN_OF[${t#*@}]}" node --listen "127.0.0.1:$other_listen" --resp "127.0.0.1:$other_resp" \
        >"$WORK/$t.log" 2>&1 &
    PIDS+=($!)
    LABELED+=("node:$t=$!")
    wait_ping "$other_resp" "$t" "$!" || die "$t exited: $(tail -3 "$WORK/$t.log")"
done

# chordkv-8 and the others of 8 nodes: `chordkv cluster` prints `resp: ...` then `ready: ...`.
start_chordkv_cluster() { # name [extra args...]
    local name=$1 out bin=$CHORDKV_BIN
    shift
    [ "$name" = "${name%@*}" ] || bin=${BIN_OF[${name#*@}]}
    out="$WORK/$name.out"
    "$bin" cluster --nodes 8 --resp --log-dir "$WORK/$name-logs" "$@" >"$out" 2>"$WORK/$name.err" &
    PIDS+=($!)
    for _ in $(seq 1200); do
        grep -q '^ready: ' "$out" && break
        sleep 0.1
    done
    grep -q '^ready: ' "$out" || die "$name did not become ready: $(tail -5 "$WORK/$name.err")"
    # The nodes run in their own process group: stop them directly too.
    local node launcher=${PIDS[-1]}
    LABELED+=("launcher:$name=$launcher")
    for node in $(pgrep -P "$launcher"); do
        PIDS+=("$node")
        LABELED+=("node:$name=$node")
    done
    PORT[$name]=$(sed -n 's/^resp: \([^ ]*\).*/\1/p' "$out" | sed 's/.*://')
    wait_ping "${PORT[$name]}" "$name"
}
tw_stores=()
for p in "${tw_ports[@]}"; do tw_stores+=("redis://127.0.0.1:$p/0"); done
for t in "${TARGETS[@]}"; do
    case "${t%@*}" in
        chordkv-8) start_chordkv_cluster "$t" ;;
        chordkv-8-r0) start_chordkv_cluster "$t" --replicas 0 ;;
        chordkv-8-redis-r0) start_chordkv_cluster "$t" --replicas 0 --stores "${tw_stores[@]}" ;;
        chordkv-8-redis-r2) start_chordkv_cluster "$t" --replicas 2 --stores "${tw_stores[@]}" ;;
    esac
done

for t in "${TARGETS[@]}"; do log "$t on port ${PORT[$t]}"; done

# ---- the runs -----------------------------------------------------------------------------

# One CSV line per (repeat, target, pipeline, test): target,pipeline,test,rps,p50,p99
RAW="$WORK/raw.csv"
: >"$RAW"
# CPU and context switches per request of each run (bench/proc-cpu.py diff).
CPU_CSV="$WORK/cpu.csv"
: >"$CPU_CSV"
# redis-server's INFO commandstats per request, for the targets over twemproxy's 3 servers.
CMD_CSV="$WORK/cmd.csv"
: >"$CMD_CSV"
over_tw_servers() { case "${1%@*}" in twemproxy | chordkv-8-redis-*) return 0 ;; esac; return 1; }

requests_of() { # target pipeline -> requests per run
    local n=$REQUESTS
    [ "$2" -gt 1 ] && n=$PIPELINED_REQUESTS
    echo $((n / ${SLOWDOWN[$1]:-1}))
}
bench_cmd() { # target pipeline test -> the redis-benchmark command line
    local t=$1 pl=$2 x=$3
    echo "redis-benchmark -h 127.0.0.1 -p ${PORT[$t]} ${EXTRA[$t]:-} -c $CLIENTS -n $(requests_of "$t" "$pl") -r $KEYSPACE -P $pl -t $x --csv"
}
# children_ticks VAR: CPU ticks of this shell's reaped children (utime + stime of every
# waited-for descendant), stored in VAR (not printed: a $(...) subshell has children of its own).
children_ticks() {
    local stat f
    read -r stat </proc/$BASHPID/stat
    stat=${stat##*) }
    read -ra f <<<"$stat"
    printf -v "$1" '%s' $((f[13] + f[14]))
}

for r in $(seq "$REPEATS"); do
    # The given order on odd repeats, reversed on even ones: a target that runs after another
    # over the same redis-servers finds the other's keys there (and its background work), so a
    # fixed order would favour the first of two builds compared.
    order=("${TARGETS[@]}")
    if ((r % 2 == 0)); then
        order=()
        for ((i = ${#TARGETS[@]} - 1; i >= 0; i--)); do order+=("${TARGETS[i]}"); done
    fi
    for t in "${order[@]}"; do
        for pl in 1 "$PIPELINE"; do
            log "repeat $r/$REPEATS $t -P $pl"
            for x in set get; do
                cmd=$(bench_cmd "$t" "$pl" "$x")
                read -ra argv <<<"$cmd"
                if over_tw_servers "$t"; then
                    for p in "${tw_ports[@]}"; do redis-cli -p "$p" CONFIG RESETSTAT >/dev/null; done
                fi
                python3 bench/proc-cpu.py snap "${LABELED[@]}" >"$WORK/before.json"
                children_ticks ticks0
                start_ns=$(date +%s%N)
                if ! timeout "$RUN_TIMEOUT_S" "${argv[@]}" >"$WORK/run.csv" 2>"$WORK/run.err"; then
                    why=$(tail -2 "$WORK/run.err" | tr '\r\n' '  ')
                    log "  $t -P $pl $x did not finish within ${RUN_TIMEOUT_S}s or failed: $why"
                    echo "repeat $r, $t, -P $pl, $x: $why" >>"$WORK/failures.txt"
                fi
                end_ns=$(date +%s%N)
                children_ticks ticks1
                python3 bench/proc-cpu.py snap "${LABELED[@]}" >"$WORK/after.json"
                infos=()
                if over_tw_servers "$t"; then
                    for p in "${tw_ports[@]}"; do
                        redis-cli -p "$p" INFO commandstats >"$WORK/cmdstats-$p.txt"
                        infos+=("$WORK/cmdstats-$p.txt")
                    done
                fi
                # "test","rps","avg","min","p50","p95","p99","max"
                tr -d '"' <"$WORK/run.csv" | awk -F, -v t="$t" -v pl="$pl" \
                    '$1=="SET"||$1=="GET" {print t","pl","$1","$2","$5","$7}' >>"$RAW"
                if grep -q "^$t,$pl,${x^^}," "$RAW"; then
                    python3 bench/proc-cpu.py diff "$WORK/before.json" "$WORK/after.json" "$t" "$pl" "${x^^}" \
                        "$(requests_of "$t" "$pl")" $((ticks1 - ticks0)) \
                        "$(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN {print (b - a) / 1e9}')" >>"$CPU_CSV"
                    if [ ${#infos[@]} -gt 0 ]; then
                        python3 bench/proc-cpu.py cmdstats "$t" "$pl" "${x^^}" "$(requests_of "$t" "$pl")" \
                            "${infos[@]}" >>"$CMD_CSV"
                    fi
                fi
            done
        done
    done
done

# ---- the report ---------------------------------------------------------------------------

median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
field() { # target pipeline test column(4 rps, 5 p50, 6 p99)
    awk -F, -v t="$1" -v pl="$2" -v x="$3" -v c="$4" '$1==t && $2==pl && $3==x {print $c}' "$RAW" | median
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a=="-" || b=="-" || b==0) print "-"; else printf "%.2f", a/b }'; }
runs() { awk -F, -v t="$1" -v pl="$2" -v x="$3" '$1==t && $2==pl && $3==x' "$RAW" | wc -l; }

mkdir -p "$(dirname "$OUT")"
{
    echo "# chordkv vs Redis, Redis Cluster and twemproxy (redis-benchmark)"
    echo
    echo "Produced by \`$COMMAND_LINE\` on $(date -u '+%Y-%m-%d %H:%M UTC'); chordkv built from"
    echo "${CHORDKV_REV:-commit \`$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\`$(git diff --quiet HEAD -- core server protocol cli 2>/dev/null || echo ' with uncommitted changes in the code')}."
    echo
    echo "Machine: $(nproc) cores ($(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM,"
    echo "Linux $(uname -r); $(redis-server --version | awk '{print $1, $2, $3}'), nutcracker $(nutcracker --version 2>&1 | sed -n 's/.*nutcracker-\([0-9.]*\).*/\1/p' | head -1);"
    echo "load average at the end of the runs: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared: other"
    echo "processes ran during the measurements, so compare ratios within this run, not across runs)."
    echo
    echo "Each cell is the median of $REPEATS runs of"
    echo
    echo '```sh'
    echo "redis-benchmark -h 127.0.0.1 -p PORT [--cluster] -c $CLIENTS -n N -r $KEYSPACE -P P -t TEST --csv"
    echo '```'
    echo
    echo "with N = $REQUESTS for P = 1 and N = $PIPELINED_REQUESTS for P = $PIPELINE, TEST = set then get, targets"
    echo "interleaved within each repeat (in the order given on odd repeats, reversed on even ones)."
    echo "Latencies are redis-benchmark's, in ms. chordkv-8: 8 nodes, memory store, 2 replicas per key"
    echo "(every SET is applied on 3 nodes before its reply), redis-benchmark connected to node 0, which"
    echo "routes each request to the key's owner. chordkv-8-r0 is chordkv-8 with --replicas 0: one copy of"
    echo "each key, like twemproxy over 3 redis-servers. chordkv-8-redis-r0 and -r2: 8 nodes keeping their"
    echo "keys in the same 3 redis-servers twemproxy uses (node i in server i mod 3), with --replicas 0 and 2."
    echo
    for pl in 1 "$PIPELINE"; do
        echo "## -P $pl"
        echo
        echo "| target | test | requests/s | p50 ms | p99 ms | vs redis | vs twemproxy | runs |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|"
        for x in SET GET; do
            base_redis=$(field redis "$pl" "$x" 4)
            base_tw=$(field twemproxy "$pl" "$x" 4)
            for t in "${TARGETS[@]}"; do
                rps=$(field "$t" "$pl" "$x" 4)
                echo "| $t | $x | $rps | $(field "$t" "$pl" "$x" 5) | $(field "$t" "$pl" "$x" 6) | $(ratio "$rps" "$base_redis") | $(ratio "$rps" "$base_tw") | $(runs "$t" "$pl" "$x") |"
            done
        done
        echo
    done
    echo "Targets (reported, not tested): chordkv-1 at or above redis (ratio >= 1.00 in \"vs redis\");"
    echo "chordkv-8 and chordkv-8-redis-r0 at or above twemproxy (ratio >= 1.00 in \"vs twemproxy\");"
    echo "chordkv-8-redis-r2 at least 0.50 of twemproxy."
    echo
    echo "## Where the CPU goes"
    echo
    echo "CPU time (utime + stime from /proc/PID/task/TID/stat) of each kind of process over each"
    echo "run, divided by the run's requests, in microseconds; medians over the repeats"
    echo "(\`bench/proc-cpu.py\`). The machine has $(nproc) cores and every process of the benchmark"
    echo "competes for them, so where they are saturated, requests/s is about $(nproc) s / total. A node's"
    echo "CPU is split by thread: the event loop (its main thread), the store pipeline worker"
    echo "(gets and puts batched to Redis), the other store workers. \"rest of the machine\": CPU used"
    echo "by processes this run did not start (other work on a shared machine; idle targets count"
    echo "there too), \"machine busy\": the share of all cores busy during the run, whoever used it."
    echo "redis-server is the 3 servers twemproxy and the chordkv-8-redis targets share, with the"
    echo "background work of every target that keeps its keys there (chordkv-8-redis-r2's anti-entropy"
    echo "scans its 3 copies of every key): leave that target out, as bench/cpu-per-request.sh does, for"
    echo "the other targets' own figures."
    echo
    python3 bench/proc-cpu.py table "$CPU_CSV" 1 "$PIPELINE"
    echo "## What the Redis-driver goals allow on this machine"
    echo
    echo "Where the cores are saturated, requests/s is about cores / (CPU per request), so a target's"
    echo "ratio to twemproxy is about twemproxy's total CPU per request over its own. A chordkv-8-redis"
    echo "target does at least the work of the same ring with the memory store (the node's threads and"
    echo "redis-benchmark, the in-memory put or get aside: a fraction of a microsecond) plus, for each"
    echo "copy written or read, at least what redis-server spends on a plain SET or GET (the lower of"
    echo "the redis target's and twemproxy's redis-server figures above). The ceiling is twemproxy's"
    echo "total over that sum: the ratio a Redis driver that cost the node nothing beyond the memory"
    echo "store and cost redis-server no more than a plain command would reach (\`bench/proc-cpu.py"
    echo "ceiling\`, medians of the runs above). A ceiling under a goal means the goal needs the node's"
    echo "own path (routing, replication) to get cheaper, not only the driver."
    echo
    python3 bench/proc-cpu.py ceiling "$CPU_CSV" 1 "$PIPELINE"
    if [ -s "$CMD_CSV" ]; then
        echo "## Where redis-server's time goes"
        echo
        echo "The 3 redis-servers' \`INFO commandstats\` over each run (\`CONFIG RESETSTAT\` before it),"
        echo "summed, divided by the run's requests; medians over the repeats: calls per request and the"
        echo "microseconds of command execution per request (reading, parsing and replying are not in"
        echo "them: the CPU tables above have the process' whole cost). The times are Redis' wall clock"
        echo "around each command: on a machine whose cores are all busy they include the moments the"
        echo "server was preempted, which a long command (a script) suffers more, so read them for where"
        echo "the time goes within a row, and the CPU tables for amounts. A script's time (evalsha) includes"
        echo "that of the commands it calls, which are listed as well; so does exec's of the commands it"
        echo "runs. Every client of the servers counts, including the background work (anti-entropy,"
        echo "expiry sweeps) of the chordkv-8-redis targets that are not being measured."
        echo
        python3 bench/proc-cpu.py cmdtable "$CMD_CSV" 1 "$PIPELINE"
    fi
    if [ -s "$WORK/failures.txt" ]; then
        echo "Runs that failed (redis-benchmark stops at the first error reply; only the tests it"
        echo "finished are counted, see \"runs\"):"
        echo
        echo '```text'
        cat "$WORK/failures.txt"
        echo '```'
        echo
    fi
    echo "Every run's figures: target,pipeline,test,rps,p50,p99"
    echo
    echo '```text'
    cat "$RAW"
    echo '```'
} >"$OUT.tmp"

# ---- profile ------------------------------------------------------------------------------

if [ "$PROFILE" = 1 ]; then
    log "profiling chordkv-1 under callgrind"
    {
        echo
        echo "## Where chordkv-1's time goes (callgrind)"
        echo
        if perf stat -e instructions true >/dev/null 2>"$WORK/perf.err" && ! grep -q 'not supported' "$WORK/perf.err"; then
            echo "(perf's hardware counters work here, but callgrind is used for a count that does not depend on the machine's noise.)"
        else
            echo "\`perf stat -e instructions true\` reports the counter as not supported on this machine, so valgrind's callgrind is used."
        fi
        echo
    } >>"$OUT.tmp"
    kill -TERM "$CK1_PID" 2>/dev/null || true
    wait "$CK1_PID" 2>/dev/null || true
    free_port prof_node
    free_port prof_resp
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
        "$CHORDKV_BIN" node --listen "127.0.0.1:$prof_node" --resp "127.0.0.1:$prof_resp" \
        >"$WORK/callgrind.log" 2>&1 &
    PIDS+=($!)
    vg=$!
    for _ in $(seq 600); do
        [ "$(redis-cli -p "$prof_resp" PING 2>/dev/null)" = PONG ] && break
        sleep 0.1
    done
    timeout 300 redis-benchmark -p "$prof_resp" -c "$CLIENTS" -n 20000 -r "$KEYSPACE" -t set,get -q \
        >/dev/null 2>&1 || log "the profiled load did not finish in time"
    kill -TERM "$vg" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$vg" 2>/dev/null || break; sleep 0.1; done
    wait "$vg" 2>/dev/null || true
    {
        echo "Command: \`valgrind --tool=callgrind chordkv node --listen ... --resp ...\` under"
        echo "\`redis-benchmark -c $CLIENTS -n 20000 -r $KEYSPACE -t set,get -q\` (40,000 requests), then SIGTERM."
        echo "Inclusive instruction counts, top entries (\`callgrind_annotate --inclusive=yes\`):"
        echo
        echo '```text'
        # awk, not head: with pipefail, a reader that stops early would fail the pipeline.
        { callgrind_annotate --inclusive=yes "$WORK/callgrind.out" 2>/dev/null || true; } |
            sed -n '/^Ir/,$p' | awk 'NR <= 45' | sed 's/ \[[^]]*\]$//' | cut -c1-160
        echo '```'
        echo
        echo "Self instruction counts, top entries (\`callgrind_annotate\`):"
        echo
        echo '```text'
        { callgrind_annotate "$WORK/callgrind.out" 2>/dev/null || true; } |
            sed -n '/^Ir/,$p' | awk 'NR <= 35' | sed 's/ \[[^]]*\]$//' | cut -c1-160
        echo '```'
    } >>"$OUT.tmp"
fi

mv "$OUT.tmp" "$OUT"
log "wrote $OUT"
