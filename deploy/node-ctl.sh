#!/usr/bin/env bash
# The host side of deploy/cluster.sh: `cluster.sh push` copies this script next to the chordkv
# binary and the node's generated node.conf on every host, and every other command runs it
# there over ssh. It controls the one chordkv node of its directory through a pid file:
#
#   bash DIR/node-ctl.sh state                       running PID | paused PID | dead
#   bash DIR/node-ctl.sh start [PEER ...]            start unless running, joining the first
#                                                    PEER that answers (none: a new ring);
#                                                    waits until the node answers
#   bash DIR/node-ctl.sh stop                        SIGTERM (graceful leave), SIGKILL after
#                                                    stop_timeout_s: stopped | killed | not-running
#   bash DIR/node-ctl.sh kill|pause|resume           SIGKILL | SIGSTOP | SIGCONT
#   bash DIR/node-ctl.sh logs [LINES]                the end of the node's log
#   bash DIR/node-ctl.sh ring                        `chordkv ring --json` from this node
#   bash DIR/node-ctl.sh check-flags FLAG ...        fail unless `chordkv node` has every FLAG
#   bash DIR/node-ctl.sh reload                      SIGHUP: the node reads its keyring again
#
# Every wait is bounded. Exit code 0 on success, 1 with one `error: ...` line on stderr.
set -euo pipefail

dir=$(cd "$(dirname "$0")" && pwd)
bin=$dir/chordkv
conf=$dir/node.conf
pidfile=$dir/node.pid
log=$dir/node.log
# Timeout of each probe of a node (`chordkv stats`), milliseconds.
probe_timeout_ms=1000

die() {
    echo "error: $*" >&2
    exit 1
}

name="" addr="" args=() start_timeout_s=30 stop_timeout_s=15 keyring=no password="" 
[ -f "$conf" ] || die "$conf is missing: run \`cluster.sh INVENTORY push\` first"
# node.conf sets name, addr (what peers and clients use), args (the `chordkv node` arguments,
# an array), start_timeout_s and stop_timeout_s.
# shellcheck source=/dev/null
. "$conf"
if [ "$keyring" = yes ]; then
    args+=(--keyring "$dir/keyring")
fi
if [ -n "$password" ]; then
    args+=(--requirepass "$password")
    # The probes below log in with it.
    export CHORDKV_PASSWORD=$password
fi

# The node's pid if its process is alive (running or stopped), else nothing. A pid file
# left by a dead node, a zombie, or a pid reused by another program do not count.
node_pid() {
    local pid state cmdline
    [ -f "$pidfile" ] || return 0
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    [ -r "/proc/$pid/stat" ] || return 0
    state=$(proc_state "$pid")
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ] || return 0
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
    [[ $cmdline == "$bin "* ]] || return 0
    echo "$pid"
}

# The state letter of /proc/PID/stat (R, S, T, Z, ...): the field after the command name,
# which may itself contain spaces and parentheses.
proc_state() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    echo "${stat%% *}"
}

# Whether process $1 exists and is not a zombie.
process_alive() {
    local state
    [[ $1 =~ ^[0-9]+$ ]] || return 1
    state=$(proc_state "$1")
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

state() {
    local pid
    pid=$(node_pid)
    if [ -z "$pid" ]; then
        echo dead
    elif [ "$(proc_state "$pid")" = T ]; then
        echo "paused $pid"
    else
        echo "running $pid"
    fi
}

answers() {
    "$bin" stats --node "$1" --timeout-ms "$probe_timeout_ms" >/dev/null 2>&1
}

start() {
    local pid join="" peer deadline
    pid=$(node_pid)
    if [ -n "$pid" ]; then
        echo "$(state) (already running: left alone)"
        return 0
    fi
    [ -x "$bin" ] || die "$bin is missing: run \`cluster.sh INVENTORY push\` first"
    for peer in "$@"; do
        [ "$peer" = "$addr" ] && continue
        if answers "$peer"; then
            join=$peer
            break
        fi
    done
    local argv=("$bin" "${args[@]}")
    [ -n "$join" ] && argv+=(--join "$join")
    echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) cluster.sh: starting $name on $addr${join:+, joining $join} ===" >>"$log"
    rm -f "$pidfile"
    # setsid: the node leaves the ssh session's process group and survives its end; the
    # shell writes its own pid, which exec hands to the node.
    # shellcheck disable=SC2016 # expanded by that shell
    setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "${argv[@]}" >>"$log" 2>&1 </dev/null &
    deadline=$((SECONDS + start_timeout_s))
    while :; do
        pid=$(node_pid)
        if [ -n "$pid" ] && answers "$addr"; then
            if [ -n "$join" ]; then
                echo "running $pid (joined $join)"
            else
                echo "running $pid (a new ring: no peer answered)"
            fi
            return 0
        fi
        # Exited: the pid file is written, and its process is gone or a zombie (between the
        # pid file and exec the process is still bash: not yet the node, not gone either).
        if [ -f "$pidfile" ] && [ -z "$pid" ] && ! process_alive "$(<"$pidfile")"; then
            echo "error: the node $name ($addr) exited during start-up; last lines of $log:" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "error: the node $name ($addr) did not answer within ${start_timeout_s} s; last lines of $log:" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
}

# Waits (bounded) until the node's process is gone.
wait_gone() {
    local deadline=$((SECONDS + $1))
    while [ -n "$(node_pid)" ]; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.1
    done
}

stop() {
    local pid
    pid=$(node_pid)
    if [ -z "$pid" ]; then
        echo not-running
        return 0
    fi
    # A stopped process cannot act on SIGTERM.
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    if wait_gone "$stop_timeout_s"; then
        echo stopped
        return 0
    fi
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone 5 || die "node $name (pid $pid) is still alive after SIGKILL"
    echo killed
}

signal_node() {
    local sig=$1 pid
    pid=$(node_pid)
    [ -n "$pid" ] || die "node $name ($addr) is not running"
    kill "-$sig" "$pid" || die "cannot send SIG$sig to node $name (pid $pid)"
}

# Waits (at most 5 s) until state() says $1, and prints it: signals arrive asynchronously.
wait_state() {
    local deadline=$((SECONDS + 5)) now
    while :; do
        now=$(state)
        if [ "${now%% *}" = "$1" ] || [ "$SECONDS" -ge "$deadline" ]; then
            echo "$now"
            [ "${now%% *}" = "$1" ] || exit 1
            return 0
        fi
        sleep 0.05
    done
}

action=${1:-}
[ $# -gt 0 ] && shift
case $action in
    state) state ;;
    start) start "$@" ;;
    stop) stop ;;
    kill)
        signal_node KILL
        wait_gone 5 || die "node $name is still alive after SIGKILL"
        echo dead
        ;;
    pause)
        signal_node STOP
        wait_state paused
        ;;
    resume)
        signal_node CONT
        wait_state running
        ;;
    logs) tail -n "${1:-100}" "$log" 2>/dev/null || die "no log yet at $log" ;;
    ring)
        [ -n "$(node_pid)" ] || die "node $name is not running"
        "$bin" ring --node "$addr" --json --timeout-ms "$probe_timeout_ms"
        ;;
    reload)
        pid=$(node_pid)
        if [ -n "$pid" ]; then
            kill -HUP "$pid" || die "cannot signal node $name ($pid)"
            echo "reloaded $pid"
        else
            echo "not running"
        fi
        ;;
    check-flags)
        help=$("$bin" node --help 2>&1) || die "$bin does not run on this host: $help"
        for flag in "$@"; do
            grep -q -e "$flag " <<<"$help" ||
                die "this chordkv binary has no \`chordkv node $flag\` option (the inventory sets it)"
        done
        ;;
    *) die "unknown command '$action' (state, start, stop, kill, pause, resume, logs, ring, reload, check-flags)" ;;
esac
