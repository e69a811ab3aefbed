#!/usr/bin/env bash
# Keys per host on a real local ring (issue 14): 8 `chordkv node` processes with V virtual
# nodes each (the memory store, replicas 2), KEYS keys SET through RESP, then each node's
# `keys_primary` from `chordkv stats`; then a 9th node joins (how many keys moved, from how
# many nodes) and leaves again (to how many nodes its keys went).
#
#   bench/balance-cluster.sh                    # writes results/balance/cluster.md
#
# Environment: VNODES (list, default "1 4 16"), KEYS (default 20000), OUT. Needs redis-cli
# (Debian: redis-tools). Builds the release binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."

VNODES=${VNODES:-"1 4 16"}
KEYS=${KEYS:-20000}
OUT=${OUT:-results/balance/cluster.md}

cargo build --release --bins -q
bin=target/release/chordkv
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

python3 -c "
for i in range($KEYS):
    k = f'key:{i}'
    print(f'*3\r\n\$3\r\nSET\r\n\${len(k)}\r\n{k}\r\n\$16\r\n{\"x\" * 16}\r')
" > "$work/load.resp"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Counter $1 (keys_primary, keys) of each node named after it, one per line.
counter() {
    local name=$1
    shift
    for a in "$@"; do
        "$bin" stats --node "$a" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['$name'])"
    done
}
primaries() { counter keys_primary "$@"; }

# Waits until the nodes named hold 3 copies of every key (replicas 2), then prints the copies
# (primary and replica) each holds, one per line.
all_copies() {
    local want=$((3 * KEYS)) sum
    for _ in $(seq 1 240); do
        sum=$(($(counter keys "$@" | paste -sd+)))
        [ "$sum" -ge "$want" ] && break
        sleep 0.5
    done
    counter keys "$@"
}

# Waits until the ring through $1 is consistent.
settle() {
    for _ in $(seq 1 300); do
        "$bin" ring --node "$1" 2>/dev/null | grep -q "^consistent: yes" && return 0
        sleep 0.5
    done
    echo "the ring did not settle" >&2
    exit 1
}

stats() { # prints "max/mean min/mean" of the numbers on stdin
    python3 -c '
import sys
v = [int(x) for x in sys.stdin.read().split()]
m = sum(v) / len(v)
print(f"{max(v) / m:.2f} {min(v) / m:.2f}")'
}

{
    echo "# Keys per host on a local ring of 8 processes"
    echo
    echo "Produced by \`bench/balance-cluster.sh\` (VNODES=\"$VNODES\" KEYS=$KEYS) on $(date -u +%Y-%m-%d):"
    echo "8 \`chordkv node\` processes (\`chordkv cluster --nodes 8 --vnodes V --resp\`, memory store,"
    echo "replicas 2), $KEYS keys SET through node 0's RESP port, then \`keys_primary\` of each"
    echo "process from \`chordkv stats\`. Then a 9th process joins (\`chordkv node --vnodes V --join\`):"
    echo "the keys that changed primary host and from how many hosts they came; then it leaves"
    echo "(SIGTERM, a graceful leave): to how many hosts its keys went. 1/9 of the keys is $((KEYS / 9))."
    echo
    echo "All copies: the keys each process holds as primary or replica (\`keys\`, 3 copies of every"
    echo "key), once they are all stored: the memory each process needs."
    echo
    echo "| V | keys_primary per process | max / mean | min / mean | all copies max / mean | min / mean | moved on join | from hosts | moved on leave | to hosts |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
} > "$work/table.md"

for v in $VNODES; do
    "$bin" cluster --nodes 8 --vnodes "$v" --resp >"$work/cluster-$v.out" 2>"$work/cluster-$v.err" &
    cpid=$!
    pids+=("$cpid")
    for _ in $(seq 1 600); do
        grep -q '^ready:' "$work/cluster-$v.out" && break
        kill -0 "$cpid" 2>/dev/null || { tail "$work/cluster-$v.err" >&2; exit 1; }
        sleep 0.5
    done
    read -r -a nodes <<<"$(sed -n 's/^ready: //p' "$work/cluster-$v.out")"
    read -r -a resps <<<"$(sed -n 's/^resp: //p' "$work/cluster-$v.out")"
    r=${resps[0]}
    errors=$(redis-cli -h "${r%:*}" -p "${r#*:}" --pipe <"$work/load.resp" | sed -n 's/.*errors: \([0-9]*\).*/\1/p')
    [ "$errors" = 0 ] || { echo "V=$v: $errors SETs failed" >&2; exit 1; }
    mapfile -t before < <(primaries "${nodes[@]}")
    ratios=$(printf '%s\n' "${before[@]}" | stats)
    copies=$(all_copies "${nodes[@]}" | stats)

    port=$(free_port)
    new=127.0.0.1:$port
    "$bin" node --listen "$new" --join "${nodes[0]}" --vnodes "$v" >"$work/node9-$v.log" 2>&1 &
    npid=$!
    pids+=("$npid")
    sleep 2
    settle "${nodes[0]}"
    mapfile -t after < <(primaries "${nodes[@]}")
    joined=$(primaries "$new")
    moved=0 from=0
    for i in "${!before[@]}"; do
        d=$((before[i] - after[i]))
        if [ "$d" -gt 0 ]; then moved=$((moved + d)); from=$((from + 1)); fi
    done

    kill -TERM "$npid"
    wait "$npid" 2>/dev/null || true
    settle "${nodes[0]}"
    mapfile -t back < <(primaries "${nodes[@]}")
    to=0 went=0
    for i in "${!after[@]}"; do
        d=$((back[i] - after[i]))
        if [ "$d" -gt 0 ]; then went=$((went + d)); to=$((to + 1)); fi
    done
    echo "| $v | ${before[*]} | ${ratios% *} | ${ratios#* } | ${copies% *} | ${copies#* } | $moved ($(python3 -c "print(f'{$moved / $KEYS:.3f}')"); the new host holds $joined) | $from | $went of $joined | $to |" >>"$work/table.md"

    kill -TERM "$cpid"
    wait "$cpid" 2>/dev/null || true
done

mkdir -p "$(dirname "$OUT")"
cp "$work/table.md" "$OUT"
cat "$OUT"
