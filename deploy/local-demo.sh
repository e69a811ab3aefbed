#!/usr/bin/env bash
# A short tour of chordkv by hand (the main job is loadgen; see README.md): start a local 8-node
# ring (in-memory store), write a key through one node, read it back through another, show the
# ring, and stop cleanly.
#
#   bash deploy/local-demo.sh [NODES] [BASE_PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-8}
base=${2:-7100}

cargo build --release --bin chordkv
bin=target/release/chordkv
out=$(mktemp)
"$bin" cluster --nodes "$nodes" --base-port "$base" >"$out" &
cluster=$!
trap 'kill -TERM $cluster 2>/dev/null; wait $cluster 2>/dev/null; rm -f "$out"' EXIT

# Wait (at most 60 s) for the one `ready:` line.
for _ in $(seq 600); do
  grep -q '^ready:' "$out" && break
  kill -0 $cluster 2>/dev/null || { echo "cluster exited early" >&2; exit 1; }
  sleep 0.1
done
grep -q '^ready:' "$out" || { echo "cluster not ready after 60 s" >&2; exit 1; }
read -r -a addrs <<<"$(sed -n 's/^ready: //p' "$out")"
first=${addrs[0]}
last=${addrs[${#addrs[@]}-1]}
echo "cluster ready: ${addrs[*]}"

set -x
"$bin" put greeting "hello from chordkv" --node "$first"
"$bin" get greeting --node "$last"
"$bin" ring --node "$first"
"$bin" stats --node "$last"
