#!/usr/bin/env bash
# The ssh deployment, end to end, on real sshd hosts made on this machine (run by
# tests/tests/deploy.rs, so by `cargo test --workspace` and tests/run-all.sh):
#
#   1. four hosts: each a network namespace with its own address on a private bridge
#      (10.77.X.0/24, the bridge is 10.77.X.1 in this namespace, names ckv-<pid>-*), running
#      Debian's sshd with its own config, host key and a generated client key. Without
#      network namespaces (tried first), sshd instances on distinct loopback addresses.
#   2. deploy/cluster.sh: a push of a binary built for another architecture is refused, an
#      unreachable host is reported as such, then push, up, status, kill, status, restart,
#      status of a 4-node cluster (2 replicas).
#   3. loadgen --inventory: workloads/deploy-smoke.yaml with a kill and a restart fault,
#      driven over ssh; loadgen's exit code and summary.json say whether a write was lost.
#   4. down; then everything is torn down (nodes, sshd, namespaces, bridge, files), also
#      when a step fails or the script is interrupted.
#
#   deploy/test-netns.sh OUT_DIR     CHORDKV_BIN, LOADGEN_BIN: the binaries (default
#                                    target/debug/); DEPLOY_TEST_MODE=loopback: no namespaces
#
# OUT_DIR gets the inventory, the logs and results/ (loadgen's); the last line is
# `deploy test: passed` (exit 0) or the failure. Needs root, ip, sshd and ssh-keygen.
#
#   deploy/test-netns.sh --hosts N [--spares K] OUT_DIR
#
# only makes N such hosts (the last K of them spare=yes in the inventory), prints the path of
# OUT_DIR/inventory, and waits; Ctrl-C (or SIGTERM) tears them down. For trying cluster.sh and
# loadgen --inventory by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

usage="usage: deploy/test-netns.sh [--hosts N [--spares K]] OUT_DIR"
hosts=4
spares=0
hosts_only=no
while [ $# -gt 1 ]; do
    case $1 in
        --hosts) hosts=${2:?$usage} hosts_only=yes ;;
        --spares) spares=${2:?$usage} ;;
        *) break ;;
    esac
    shift 2
done
if ! [[ $hosts =~ ^[1-9][0-9]?$ && $spares =~ ^[0-9]+$ ]] || [ "$spares" -ge "$hosts" ]; then
    echo "$usage (N: 1-99, K < N)" >&2
    exit 2
fi
out=${1:?$usage}
mkdir -p "$out"
out=$(cd "$out" && pwd)
chordkv_bin=${CHORDKV_BIN:-$repo/target/debug/chordkv}
loadgen_bin=${LOADGEN_BIN:-$(dirname "$chordkv_bin")/loadgen}
# Every name this run creates starts with this, so parallel runs do not clash.
prefix=ckv-$$-
# Bound of one cluster.sh or loadgen call (each bounds its own waits; this is a backstop).
STEP_TIMEOUT_S=120

step() { echo "--- [${SECONDS} s] $*"; }
fail() {
    echo "deploy test: FAILED: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || fail "needs root (network namespaces, sshd)"
sshd_bin=$(command -v sshd || echo /usr/sbin/sshd)
[ -x "$sshd_bin" ] || fail "sshd is not installed (Debian: apt-get install openssh-server; tests/run-all.sh does it)"
for tool in ip ssh scp ssh-keygen timeout; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
[ -x "$chordkv_bin" ] || fail "no chordkv binary at $chordkv_bin (cargo build --bins)"
[ "$hosts_only" = yes ] || [ -x "$loadgen_bin" ] || fail "no loadgen binary at $loadgen_bin (cargo build --bins)"

tmp=$(mktemp -d "/tmp/${prefix}XXXX")
sshd_pids=()
namespaces=()
bridge=""

cleanup() {
    local rc=$? pid ns
    set +e
    # Nodes: by their pid files (every host's directory is on this machine's filesystem).
    for pid_file in "$tmp"/remote/*/node.pid; do
        [ -f "$pid_file" ] || continue
        pid=$(<"$pid_file")
        if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$tmp/remote/"; then
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    for pid in "${sshd_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    # Anything else still inside our own namespaces (ssh sessions).
    for ns in "${namespaces[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null
        done
        ip netns del "$ns" 2>/dev/null
    done
    [ -n "$bridge" ] && ip link del "$bridge" 2>/dev/null
    for pid in "${sshd_pids[@]}"; do
        wait "$pid" 2>/dev/null
    done
    rm -rf "$tmp"
    if [ "$rc" -eq 0 ] || { [ "$hosts_only" = yes ] && [ "$rc" -eq 130 ]; }; then
        echo "deploy test: torn down (namespaces, bridge, sshd, nodes)"
    else
        echo "deploy test: torn down after a failure (exit $rc); logs in $out" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- hosts ------------------------------------------------------------------------------------

# A /24 no interface here uses yet: 10.77.X.0 (X from our pid, then the next free one).
pick_subnet() {
    local x i used
    used=$(ip -4 -o addr show 2>/dev/null || true)
    for i in $(seq 0 249); do
        x=$((($$ + i) % 250 + 1))
        if ! grep -q " 10\.77\.$x\." <<<"$used" && ! ip -4 route show 2>/dev/null | grep -q "^10\.77\.$x\."; then
            echo "$x"
            return 0
        fi
    done
    return 1
}

host_addr=()
# DEPLOY_TEST_MODE=loopback skips the namespaces (to test the fallback itself).
if [ "${DEPLOY_TEST_MODE:-}" != loopback ] && ip netns add "${prefix}probe" 2>/dev/null; then
    ip netns del "${prefix}probe"
    mode=netns
    x=$(pick_subnet) || fail "no free 10.77.X.0/24 subnet"
    bridge=${prefix}br
    step "hosts: $hosts network namespaces on bridge $bridge (10.77.$x.0/24)"
    ip link add "$bridge" type bridge
    # Traffic between the hosts crosses the bridge: keep this machine's iptables (e.g.
    # Docker's FORWARD policy via br_netfilter) out of it, for this bridge only.
    ip link set "$bridge" type bridge nf_call_iptables 0 nf_call_ip6tables 0 nf_call_arptables 0 \
        2>/dev/null || true
    ip addr add "10.77.$x.1/24" dev "$bridge"
    ip link set "$bridge" up
    for i in $(seq 1 "$hosts"); do
        ns=${prefix}h$i
        ip netns add "$ns"
        namespaces+=("$ns")
        ip link add "${prefix}v$i" type veth peer name "${prefix}e$i"
        ip link set "${prefix}e$i" netns "$ns"
        ip link set "${prefix}v$i" master "$bridge" up
        ip -n "$ns" link set lo up
        ip -n "$ns" link set "${prefix}e$i" name eth0
        ip -n "$ns" addr add "10.77.$x.$((10 + i))/24" dev eth0
        ip -n "$ns" link set eth0 up
        host_addr+=("10.77.$x.$((10 + i))")
    done
else
    mode=loopback
    x=$(($$ % 250 + 1))
    echo "NOTE: network namespaces are not available here (ip netns add failed or DEPLOY_TEST_MODE=loopback):" \
        "falling back to sshd instances on distinct loopback addresses 127.77.$x.11-$((10 + hosts))"
    for i in $(seq 1 "$hosts"); do
        host_addr+=("127.77.$x.$((10 + i))")
    done
fi

step "sshd on each host, with a generated client key"
ssh-keygen -q -t ed25519 -N '' -C chordkv-deploy-test -f "$tmp/client_key"
cp "$tmp/client_key.pub" "$tmp/authorized_keys"
# sshd refuses to start without its privilege separation directory.
mkdir -p /run/sshd
sshd_port=22
[ "$mode" = loopback ] && sshd_port=$((20000 + $$ % 20000))
for i in $(seq 1 "$hosts"); do
    h=$tmp/sshd-$i
    mkdir -p "$h"
    ssh-keygen -q -t ed25519 -N '' -f "$h/host_key"
    cat >"$h/sshd_config" <<EOF
ListenAddress ${host_addr[$((i - 1))]}:$sshd_port
HostKey $h/host_key
AuthorizedKeysFile $tmp/authorized_keys
PidFile $h/sshd.pid
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
Subsystem sftp internal-sftp
LogLevel INFO
EOF
    if [ "$mode" = netns ]; then
        ip netns exec "${prefix}h$i" "$sshd_bin" -D -f "$h/sshd_config" -E "$out/sshd-$i.log" &
    else
        "$sshd_bin" -D -f "$h/sshd_config" -E "$out/sshd-$i.log" &
    fi
    sshd_pids+=($!)
done

# --- the inventory ----------------------------------------------------------------------------

inv=$out/inventory
# Every node runs with the ring's keyring (cluster.sh copies it with mode 0600); the test
# rotates it under the running ring below.
"$chordkv_bin" keygen >"$tmp/ring.key"
{
    echo "# Written by deploy/test-netns.sh ($mode mode)."
    echo "replicas=2"
    echo "ack=all"
    # The default period: timeouts that a machine busy with other builds does not trip.
    echo "stabilize_ms=250"
    echo "ssh_user=root"
    echo "ssh_key=$tmp/client_key"
    echo "known_hosts=$tmp/known_hosts"
    echo "dir=$tmp/remote"
    echo "binary=$chordkv_bin"
    echo "keyring=$tmp/ring.key"
    for i in $(seq 1 "$hosts"); do
        # h1 also serves Redis clients (resp= is passed only where set).
        echo "host h$i ssh=root@${host_addr[$((i - 1))]}:$sshd_port listen=${host_addr[$((i - 1))]}:7000" \
            "$([ "$i" -eq 1 ] && echo "resp=${host_addr[0]}:6379")" \
            "$([ "$i" -gt $((hosts - spares)) ] && echo "spare=yes")"
    done
} >"$inv"
cat "$inv"

cluster() {
    local started=$SECONDS rc=0
    echo "\$ deploy/cluster.sh inventory $*"
    timeout -k 5 "$STEP_TIMEOUT_S" deploy/cluster.sh "$inv" "$@" || rc=$?
    echo "  ($((SECONDS - started)) s, exit $rc)"
    return "$rc"
}

# sshd listens a moment after it starts: wait (bounded) until every host takes a login.
step "waiting for the sshd instances"
deadline=$((SECONDS + 20))
until deploy/cluster.sh "$inv" state >"$out/state.txt" 2>&1 && ! grep -q unreachable "$out/state.txt"; do
    for pid in "${sshd_pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { tail -n 5 "$out"/sshd-*.log >&2; fail "an sshd exited"; }
    done
    [ "$SECONDS" -lt "$deadline" ] || { cat "$out/state.txt" >&2; tail -n 5 "$out"/sshd-*.log >&2; fail "sshd does not take logins after 20 s"; }
    sleep 0.2
done
cat "$out/state.txt"
if [ "$mode" = netns ] && [ "$hosts" -ge 2 ]; then
    # The nodes talk to each other across the bridge, not through this namespace.
    ip netns exec "${prefix}h1" timeout 5 bash -c "exec 3<>/dev/tcp/${host_addr[1]}/$sshd_port" ||
        fail "host h1 cannot reach h2 (${host_addr[1]}) across the bridge: a firewall on bridged traffic?"
fi

if [ "$hosts_only" = yes ]; then
    echo "hosts ready ($mode mode): deploy/cluster.sh $inv push|up|status|...; Ctrl-C tears them down"
    while :; do sleep 1; done
fi

# --- deploy/cluster.sh ------------------------------------------------------------------------

step "a binary for another architecture is refused"
# An ELF header that says aarch64 (e_machine 0xb7) on an x86_64 host, or x86_64 elsewhere.
head -c 64 "$chordkv_bin" >"$tmp/foreign"
if [ "$(uname -m)" = x86_64 ]; then machine='\xb7'; else machine='\x3e'; fi
printf '%b' "$machine" | dd of="$tmp/foreign" bs=1 seek=18 conv=notrunc status=none
sed "s|^binary=.*|binary=$tmp/foreign|" "$inv" >"$tmp/inventory-foreign"
if deploy/cluster.sh "$tmp/inventory-foreign" push h1 >"$out/push-foreign.txt" 2>&1; then
    fail "a push of a foreign binary succeeded"
fi
cat "$out/push-foreign.txt"
grep -q "is $(uname -m) but .* is built for" "$out/push-foreign.txt" || fail "no architecture error"

step "an unreachable host is reported"
sed "s|^host h1 ssh=\([^ ]*\):$sshd_port |host h1 ssh=\1:1 |" "$inv" >"$tmp/inventory-unreachable"
if deploy/cluster.sh "$tmp/inventory-unreachable" status h1 >"$out/status-unreachable.txt" 2>&1; then
    fail "status of an unreachable host succeeded"
fi
cat "$out/status-unreachable.txt"
grep -q "^h1 .*unreachable" "$out/status-unreachable.txt" || fail "h1 not reported unreachable"

step "push, up, status"
cluster push
cluster up
cluster status --wait 30 | tee "$out/status-up.txt" || fail "status is not healthy after up"
# The RESP listener of h1 (resp=): PING -> +PONG.
exec 3<>"/dev/tcp/${host_addr[0]}/6379" || fail "h1's RESP address does not accept connections"
printf 'PING\r\n' >&3
read -r -t 10 pong <&3 || true
exec 3>&-
echo "RESP PING to h1: ${pong%$'\r'}"
[ "${pong%$'\r'}" = "+PONG" ] || fail "h1's RESP address did not answer PING with +PONG"
cluster up | tee "$out/up-again.txt"
grep -q "already running" "$out/up-again.txt" || fail "a second up did not leave the running nodes alone"

step "kill, status, restart, status"
cluster kill h2
if cluster status --wait 30 >"$out/status-killed.txt" 2>&1; then
    cat "$out/status-killed.txt"
    fail "status says healthy with h2 killed"
fi
cat "$out/status-killed.txt"
grep -q "^h2 .* dead" "$out/status-killed.txt" || fail "h2 not reported dead"
cluster restart h2
cluster status --wait 30 | tee "$out/status-restarted.txt" || fail "status is not healthy after the restart"
cluster logs h2 5

step "keyring: 0600 on every host, rotated (install, use, remove) with the ring up"
for i in $(seq 1 $((hosts - spares))); do
    mode=$(stat -c %a "$tmp/remote/h$i/keyring")
    [ "$mode" = 600 ] || fail "h$i's keyring has mode $mode, not 600"
done
old_key=$(head -1 "$tmp/ring.key")
new_key=$("$chordkv_bin" keygen)
printf '%s\n%s\n' "$old_key" "$new_key" >"$tmp/ring.key"
cluster keyring | tee "$out/keyring-install.txt"
printf '%s\n%s\n' "$new_key" "$old_key" >"$tmp/ring.key"
cluster keyring >/dev/null
printf '%s\n' "$new_key" >"$tmp/ring.key"
cluster keyring >/dev/null
cluster status --wait 30 | tee "$out/status-rotated.txt" || fail "status is not healthy after the rotation"
grep -q "reloaded" "$out/keyring-install.txt" || fail "keyring did not reload the running nodes"

# --- loadgen against the deployed cluster ------------------------------------------------------

step "loadgen --inventory with a kill and a restart fault"
rc=0
timeout -k 5 "$STEP_TIMEOUT_S" "$loadgen_bin" --workload workloads/deploy-smoke.yaml --inventory "$inv" \
    --out "$out/results" 2>&1 | tee "$out/loadgen.txt" || rc=$?
[ "$rc" -eq 0 ] || fail "loadgen exited with $rc"
grep -Eq '"lost": 0\b' "$out/results/summary.json" || fail "summary.json does not say lost 0"
cluster up >/dev/null
cluster status --wait 30 | tee "$out/status-after-load.txt" || fail "status is not healthy after the load"

step "down"
cluster down
cluster state | tee "$out/state-down.txt"
[ "$(grep -c ' dead$' "$out/state-down.txt")" -eq "$hosts" ] || fail "not every node stopped"

echo "deploy test: passed ($mode mode)"
