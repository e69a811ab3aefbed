#!/usr/bin/env bash
# Redis' own test units against a chordkv ring, in the test suite's external-server mode.
#
#   bench/redis-tests.sh                  # writes results/redis-tests.md
#
# The sources of the test suite are Debian's `redis` source package of the redis-server this
# machine has (`apt-get source --download-only`, from a deb-src list written to a scratch
# directory; nothing is copied into the project), unpacked under target/redis-src.
#
# For each unit (UNITS, default: unit/type/string unit/expire unit/keyspace) the suite runs
# with `./runtest --host 127.0.0.1 --port P --singledb --single UNIT` against `chordkv cluster
# --nodes NODES --resp` (memory store, default 1 node with its 8 vnodes). A test that fails an
# assertion is counted as failed with its message. A test that stops the suite (the suite
# aborts a unit at an error it did not expect, e.g. `unknown command 'sadd'`) is recorded as
# not run, with that error as the reason, and the unit is run again without it
# (`--skiptest`), until it completes. Tests the suite itself skips for external servers are
# listed as such. Every failure and every test not run comes with its reason.
#
# Environment: UNITS, NODES (default 1), CHORDKV_BIN (default: build target/release/chordkv),
# OUT (default results/redis-tests.md), MAX_RERUNS (per unit, default 60).
set -euo pipefail
cd "$(dirname "$0")/.."

UNITS=${UNITS:-"unit/type/string unit/expire unit/keyspace"}
NODES=${NODES:-1}
OUT=${OUT:-results/redis-tests.md}
MAX_RERUNS=${MAX_RERUNS:-60}
COMMAND_LINE="bench/redis-tests.sh"
[ "$NODES" != 1 ] && COMMAND_LINE="NODES=$NODES $COMMAND_LINE"

log() { echo "redis-tests: $*" >&2; }
die() { log "error: $*"; exit 1; }

command -v tclsh >/dev/null 2>&1 || die "tclsh is needed (apt-get install tcl)"
command -v redis-server >/dev/null 2>&1 || die "redis-server is needed (apt-get install redis-server): its version picks the test sources"

# ---- the test suite's sources --------------------------------------------------------------

version=$(dpkg-query -W -f '${Version}' redis-server 2>/dev/null || true)
[ -n "$version" ] || die "cannot tell the installed redis-server's Debian version"
upstream=${version#*:}
upstream=${upstream%%-*}
src_root=target/redis-src
src="$src_root/redis-$upstream"
if [ ! -x "$src/runtest" ]; then
    log "fetching Debian's redis $version source package"
    mkdir -p "$src_root/apt/lists/partial"
    . /etc/os-release
    cat >"$src_root/apt/sources.list" <<EOF
deb-src http://deb.debian.org/debian $VERSION_CODENAME main
deb-src http://deb.debian.org/debian $VERSION_CODENAME-updates main
deb-src http://deb.debian.org/debian-security $VERSION_CODENAME-security main
EOF
    apt_opts=(-o "Dir::Etc::SourceList=$PWD/$src_root/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$PWD/$src_root/apt/lists" -o "Dir::Cache=$PWD/$src_root/apt/cache")
    apt-get "${apt_opts[@]}" update -q >&2
    (cd "$src_root" && apt-get "${apt_opts[@]}" source --download-only "redis=$version" >&2)
    tar -xzf "$src_root"/redis_"$upstream".orig.tar.gz -C "$src_root"
    [ -x "$src/runtest" ] || die "no runtest in $src"
fi

# ---- the ring --------------------------------------------------------------------------------

if [ -z "${CHORDKV_BIN:-}" ]; then
    cargo build --release --bin chordkv -q
    CHORDKV_BIN=target/release/chordkv
fi
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet 2>/dev/null || rev="$rev + uncommitted changes"
work=$(mktemp -d)
cluster_pid=
cleanup() {
    [ -n "$cluster_pid" ] && kill "$cluster_pid" 2>/dev/null && wait "$cluster_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
"$CHORDKV_BIN" cluster --nodes "$NODES" --resp >"$work/cluster.log" 2>&1 &
cluster_pid=$!
for _ in $(seq 1 300); do
    grep -q '^ready:' "$work/cluster.log" && break
    kill -0 "$cluster_pid" 2>/dev/null || { cat "$work/cluster.log" >&2; die "the cluster exited"; }
    sleep 0.1
done
grep -q '^ready:' "$work/cluster.log" || die "the cluster did not print ready: within 30 s"
port=$(grep -o '^resp: [0-9.]*:[0-9]*' "$work/cluster.log" | head -1 | cut -d: -f3)
log "chordkv ($NODES node(s)), RESP on 127.0.0.1:$port"

# ---- the units -------------------------------------------------------------------------------

# run_unit UNIT: runs the unit until it completes, skipping each test that stopped it; leaves
# the last run's output in $work/UNIT.log and the tests not run in $work/UNIT.notrun
# (name TAB reason, one a line).
run_unit() {
    local unit=$1 base
    base=$work/$(echo "$unit" | tr / _)
    : >"$base.notrun"
    local skips=()
    for _ in $(seq 1 "$MAX_RERUNS"); do
        (cd "$src" && timeout 900 ./runtest --host 127.0.0.1 --port "$port" --singledb \
            --single "$unit" --clients 1 --timeout 300 ${skips[@]+"${skips[@]}"}) >"$base.log" 2>&1 || true
        local stopped
        stopped=$(python3 bench/redis-tests-parse.py stopped "$base.log")
        [ -z "$stopped" ] && return 0
        local name=${stopped%%$'\t'*}
        grep -qxF "$stopped" "$base.notrun" && { log "$unit: '$name' stopped the unit twice"; return 0; }
        printf '%s\n' "$stopped" >>"$base.notrun"
        log "$unit: not run: $stopped"
        skips+=(--skiptest "$name")
    done
    log "$unit: gave up after $MAX_RERUNS runs"
}

for unit in $UNITS; do
    log "running $unit"
    run_unit "$unit"
done

mkdir -p "$(dirname "$OUT")"
python3 bench/redis-tests-parse.py report "$work" "$COMMAND_LINE" "$rev" "$version" "$NODES" $UNITS >"$OUT"
log "wrote $OUT"
