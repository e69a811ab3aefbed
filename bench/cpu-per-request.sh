#!/usr/bin/env bash
# Where the CPU of a redis-benchmark request goes: bench/compare-redis.sh's runs, whose report
# gives CPU microseconds per request for each kind of process (a node's event loop, its store
# pipeline worker and other store workers, redis-server, twemproxy, redis-benchmark) and
# context switches per request, for twemproxy, chordkv-8-r0 (memory store) and
# chordkv-8-redis-r0 (the same 8 nodes over twemproxy's 3 redis-servers) by default.
#
#   bench/cpu-per-request.sh                     # writes results/cpu-per-request.md
#
# Environment: as bench/compare-redis.sh (REQUESTS, PIPELINED_REQUESTS, REPEATS, TARGETS,
# CHORDKV_BIN, OUT); PROFILE is 0 and OUT results/cpu-per-request.md unless given.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROFILE=${PROFILE:-0}
export OUT=${OUT:-results/cpu-per-request.md}
export TARGETS=${TARGETS:-twemproxy chordkv-8-r0 chordkv-8-redis-r0}
exec bench/compare-redis.sh
