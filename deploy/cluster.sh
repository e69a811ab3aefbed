#!/usr/bin/env bash
# Deploys and operates a chordkv cluster on several hosts over ssh: one `chordkv node` per
# host line of an inventory (format: deploy/README.md, example: deploy/inventory.example).
# Needs only bash, ssh and scp here, and bash and coreutils on the hosts.
#
#   deploy/cluster.sh INVENTORY push [HOST]       copy the binary, node-ctl.sh and node.conf
#   deploy/cluster.sh INVENTORY up                start every stopped node, wait for the ring
#   deploy/cluster.sh INVENTORY status [--wait S] [HOST]   processes, the ring's consistency
#   deploy/cluster.sh INVENTORY down              stop every node gracefully
#   deploy/cluster.sh INVENTORY start|stop|restart|kill|pause|resume|logs HOST
#   deploy/cluster.sh INVENTORY state             one machine-readable line per host
#   deploy/cluster.sh INVENTORY keyring [HOST]    copy the keyring (mode 0600), reload it
#
# Exit codes: 0 success (`status`: every node running and the ring consistent), 1 failure,
# 2 bad arguments or a bad inventory. Every ssh call has a connect timeout and an overall
# timeout, and every wait is bounded.
set -Eeuo pipefail
# A command that fails where no caller checks it ends the script (set -e); say which, so no
# failure is silent (errtrace: also inside functions and subshells).
# A deliberate `return N` or `exit N` is not such a failure.
trap '_err_rc=$?; case $BASH_COMMAND in return* | exit*) ;; *) echo "cluster.sh: error: line $LINENO: \`$BASH_COMMAND\` failed with status $_err_rc" >&2 ;; esac' ERR

usage() {
    cat >&2 <<'EOF'
usage: deploy/cluster.sh INVENTORY COMMAND [HOST]

  push [HOST]      copy the chordkv binary (refused if built for another architecture than the
                   host's), node-ctl.sh and the node's node.conf to every host (or one)
  up               start every node that is not running (the first creates the ring, each
                   other joins a live node once the previous one answers), then wait until the
                   ring is consistent; running nodes are left alone
  status [--wait S] [HOST]
                   per host: running, paused, dead or unreachable; then the ring as seen from
                   a live node; exit 0 only if every node runs and the ring is consistent.
                   --wait S: first wait (at most S s) for the ring to hold exactly the running
                   nodes, consistently (it settles a few stabilize periods after a change)
  state            one line per host: NAME ADDR ROLE STATE [PID] (for scripts and loadgen)
  keyring [HOST]   copy the inventory's keyring= file to every host (or one), mode 0600, and
                   make every running node read it again (SIGHUP): each step of a rotation
                   (add the new key as a second line; make it the first; remove the old one)
                   is an edit of the file and one `keyring`
  down             stop every node gracefully (SIGTERM: it hands its keys over and leaves)
  start HOST       start the node unless it runs, joining a live node
  stop HOST        stop the node gracefully (SIGKILL if it has not left within stop_timeout_s)
  restart HOST     stop the node if it runs, then start it again, joining a live node, and
                   wait until the ring is consistent (`start` does not wait for the ring)
  kill HOST        SIGKILL the node (a crash)
  pause HOST       SIGSTOP the node (a node that hangs)
  resume HOST      SIGCONT the node
  logs HOST [N]    the last N lines (default 100) of the node's log
  disconnect       close the ssh connections kept in $CHORDKV_SSH_MUX_DIR (loadgen's)
EOF
    exit 2
}

# Seconds ssh may take to connect; seconds without an answer to a keep-alive before giving up.
SSH_CONNECT_TIMEOUT_S=5
SSH_ALIVE_INTERVAL_S=5
SSH_ALIVE_COUNT=3
# Bound of one ssh command that does not start a node (a copy, a signal, a state query).
SSH_COMMAND_TIMEOUT_S=120
# An idle ssh master (see ensure_master) exits after this many seconds, even if this script
# was killed before it could close it.
SSH_MASTER_IDLE_S=60
# Seconds between two looks at the ring while waiting for it.
RING_POLL_S=0.5

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
node_ctl=$here/node-ctl.sh

die() {
    echo "cluster.sh: error: $*" >&2
    exit 1
}

bad_input() {
    echo "cluster.sh: error: $*" >&2
    exit 2
}

# --- the inventory ----------------------------------------------------------------------------

# Cluster-wide settings and their defaults; `routing`, `cache`, `vnodes` and `node_args` are
# passed only when set.
declare -A cfg=(
    [replicas]="" [ack]="" [successors]="" [stabilize_ms]="" [store_threads]=""
    [routing]="" [cache]="" [vnodes]="" [node_args]="" [store]=memory
    [ssh_user]="" [ssh_port]=22 [ssh_key]="" [ssh_options]="" [known_hosts]=""
    [dir]=chordkv [binary]="" [start_timeout_s]=30 [stop_timeout_s]=15 [ring_timeout_s]=60
    [keyring]="" [requirepass]="" [protected_mode]=no
)
# Cluster settings that become `chordkv node` flags: setting -> flag.
declare -A node_flag=(
    [replicas]=--replicas [ack]=--ack [successors]=--successors [stabilize_ms]=--stabilize-ms
    [store_threads]=--store-threads [routing]=--routing [cache]=--cache [vnodes]=--vnodes
)
# Flags a node binary may lack (they arrived after the first releases): checked on push.
optional_flags=(routing cache vnodes)
# The most virtual nodes a node runs (`chordkv node --vnodes`, core/src/options.rs MAX_VNODES).
MAX_VNODES=256

names=()
declare -A h_user h_host h_port h_listen h_advertise h_resp h_metrics h_store h_key h_dir h_spare

# `~/x` -> $HOME/x; a relative path -> relative to the inventory's directory.
local_path() {
    local p=$1
    # shellcheck disable=SC2088 # a literal ~/ in the inventory
    case $p in
        "~/"*) p=$HOME/${p#"~/"} ;;
        /*) ;;
        *) p=$inventory_dir/$p ;;
    esac
    echo "$p"
}

is_addr() {
    [[ $1 =~ ^[^[:space:]:]+:[0-9]+$ ]]
}

parse_inventory() {
    local file=$1 lineno=0 line word key value name
    [ -f "$file" ] || bad_input "no inventory file $file"
    while IFS= read -r line || [ -n "$line" ]; do
        lineno=$((lineno + 1))
        line=${line%%#*}
        read -r -a words <<<"$line" || true
        [ ${#words[@]} -eq 0 ] && continue
        if [ "${words[0]}" = host ]; then
            [ ${#words[@]} -ge 2 ] || bad_input "$file:$lineno: a host line needs a name: host NAME ssh=... listen=..."
            name=${words[1]}
            [[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || bad_input "$file:$lineno: bad host name '$name' (letters, digits, _ . -)"
            [ -z "${h_listen[$name]+set}" ] || bad_input "$file:$lineno: host $name is listed twice"
            names+=("$name")
            h_user[$name]="" h_host[$name]="" h_port[$name]="" h_listen[$name]="" h_advertise[$name]=""
            h_resp[$name]="" h_metrics[$name]="" h_store[$name]="" h_key[$name]="" h_dir[$name]="" h_spare[$name]=no
            for word in "${words[@]:2}"; do
                [[ $word == *=* ]] || bad_input "$file:$lineno: '$word' is not FIELD=VALUE"
                key=${word%%=*}
                value=${word#*=}
                case $key in
                    ssh)
                        local target=$value
                        if [[ $target == *@* ]]; then
                            h_user[$name]=${target%%@*}
                            target=${target#*@}
                        fi
                        if [[ $target == *:* ]]; then
                            h_port[$name]=${target##*:}
                            target=${target%:*}
                            [[ ${h_port[$name]} =~ ^[0-9]+$ ]] || bad_input "$file:$lineno: bad ssh port in '$value'"
                        fi
                        h_host[$name]=$target
                        ;;
                    listen | advertise | resp | metrics)
                        is_addr "$value" || bad_input "$file:$lineno: $key=$value is not IP:PORT"
                        case $key in
                            listen) h_listen[$name]=$value ;;
                            advertise) h_advertise[$name]=$value ;;
                            resp) h_resp[$name]=$value ;;
                            metrics) h_metrics[$name]=$value ;;
                        esac
                        ;;
                    store) h_store[$name]=$value ;;
                    key) h_key[$name]=$(local_path "$value") ;;
                    dir) h_dir[$name]=$value ;;
                    spare)
                        [[ $value =~ ^(yes|no)$ ]] || bad_input "$file:$lineno: spare=$value: expected yes or no"
                        h_spare[$name]=$value
                        ;;
                    *) bad_input "$file:$lineno: unknown host field '$key' (ssh, listen, advertise, resp, metrics, store, key, dir, spare)" ;;
                esac
            done
            [ -n "${h_host[$name]}" ] || bad_input "$file:$lineno: host $name has no ssh=[USER@]HOST[:PORT]"
            [ -n "${h_listen[$name]}" ] || bad_input "$file:$lineno: host $name has no listen=IP:PORT"
            if [[ ${h_listen[$name]} == 0.0.0.0:* ]] && [ -z "${h_advertise[$name]}" ]; then
                bad_input "$file:$lineno: host $name listens on ${h_listen[$name]}: give advertise=IP:PORT"
            fi
        elif [[ ${words[0]} == *=* ]]; then
            key=${line%%=*}
            key=${key//[[:space:]]/}
            value=${line#*=}
            value=${value#"${value%%[![:space:]]*}"}
            value=${value%"${value##*[![:space:]]}"}
            [ -n "${cfg[$key]+set}" ] || bad_input "$file:$lineno: unknown setting '$key' (${!cfg[*]})"
            if [ "$key" = vnodes ] && [ -n "$value" ] && ! { [[ $value =~ ^[0-9]{1,3}$ ]] && ((10#$value >= 1 && 10#$value <= MAX_VNODES)); }; then
                bad_input "$file:$lineno: vnodes=$value: expected a whole number of ring positions per node, 1 to $MAX_VNODES"
            fi
            cfg[$key]=$value
        else
            bad_input "$file:$lineno: expected KEY=VALUE or a host line, found '${words[0]}'"
        fi
    done <"$file"
    [ ${#names[@]} -gt 0 ] || bad_input "$file lists no host"
    local n
    for n in start_timeout_s stop_timeout_s ring_timeout_s ssh_port; do
        [[ ${cfg[$n]} =~ ^[0-9]+$ ]] || bad_input "$file: $n=${cfg[$n]} is not a whole number"
    done
    local first_node=""
    for name in "${names[@]}"; do
        if [ "${h_spare[$name]}" = no ]; then
            first_node=$name
            break
        fi
    done
    [ -n "$first_node" ] || bad_input "$file: every host is a spare; at least one must run a node"
}

# The address peers and clients use.
addr_of() {
    echo "${h_advertise[$1]:-${h_listen[$1]}}"
}

# The node's directory on its host; `~/x` is `x`, since relative paths are in the home.
remote_dir() {
    local d=${h_dir[$1]:-${cfg[dir]}/$1}
    echo "${d#"~/"}"
}

target_of() {
    local user=${h_user[$1]:-${cfg[ssh_user]}}
    echo "${user:+$user@}${h_host[$1]}:${h_port[$1]:-${cfg[ssh_port]}}"
}

check_host() {
    [ -n "${h_listen[$1]+set}" ] || bad_input "no host '$1' in $inventory (hosts: ${names[*]})"
}

# --- ssh --------------------------------------------------------------------------------------

# Options shared by ssh and scp for host $1 (without the port, whose flag differs).
ssh_options() {
    local name=$1 key=${h_key[$1]:-}
    [ -z "$key" ] && [ -n "${cfg[ssh_key]}" ] && key=$(local_path "${cfg[ssh_key]}")
    opts=()
    # First: for ssh the first value given for an option wins, so these override the defaults.
    if [ -n "${cfg[ssh_options]}" ]; then
        local extra
        read -r -a extra <<<"${cfg[ssh_options]}"
        opts+=("${extra[@]}")
    fi
    opts+=(-o BatchMode=yes -o "ConnectTimeout=$SSH_CONNECT_TIMEOUT_S"
        -o "ServerAliveInterval=$SSH_ALIVE_INTERVAL_S" -o "ServerAliveCountMax=$SSH_ALIVE_COUNT"
        -o StrictHostKeyChecking=accept-new -o LogLevel=ERROR)
    if [ -n "${cfg[known_hosts]}" ]; then
        opts+=(-o "UserKnownHostsFile=$(local_path "${cfg[known_hosts]}")")
    fi
    if [ -n "$key" ]; then
        [ -r "$key" ] || bad_input "host $name: cannot read the ssh key $key"
        opts+=(-i "$key" -o IdentitiesOnly=yes)
    fi
    local user=${h_user[$name]:-${cfg[ssh_user]}}
    login=${user:+$user@}${h_host[$name]}
    port=${h_port[$name]:-${cfg[ssh_port]}}
}

# Explains a failed ssh or scp to host $1: exit status $2, its stderr in file $3.
ssh_failure() {
    local name=$1 rc=$2 errfile=$3 what
    what=$(tail -n 30 "$errfile" | sed 's/^cluster.sh: //')
    if [ "$rc" -eq 255 ]; then
        echo "cluster.sh: error: host $name ($(target_of "$name")) is unreachable over ssh: ${what:-no message}" >&2
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "cluster.sh: error: host $name ($(target_of "$name")): no answer within the time limit" >&2
    else
        echo "cluster.sh: host $name: ${what:-failed with status $rc}" >&2
    fi
}

# One ssh connection (a multiplexing master) per host, shared by all calls to that host: a
# login costs a key exchange, seconds on a loaded machine. Masters live for one run of this
# script and are closed when it exits, or, with CHORDKV_SSH_MUX_DIR=DIR (loadgen sets it),
# live in DIR across runs until `disconnect`; either way they exit after SSH_MASTER_IDLE_S
# idle seconds. A call whose master is gone connects directly.
mux_dir=${CHORDKV_SSH_MUX_DIR:-}
mux() {
    echo "${mux_dir:-$tmp}/mux-$1"
}

ensure_master() {
    local name=$1 rc=0 sock
    sock=$(mux "$name")
    if [ -S "$sock" ]; then
        ssh -o "ControlPath=$sock" -O check "$name" >/dev/null 2>&1 && return 0
        rm -f "$sock"
    fi
    ssh_options "$name"
    # Its stdio goes elsewhere: a background master must not hold a caller's pipe open.
    timeout -k 5 $((SSH_CONNECT_TIMEOUT_S + 20)) ssh -f -N -M -o "ControlPath=$sock" \
        -o "ControlPersist=$SSH_MASTER_IDLE_S" "${opts[@]}" -p "$port" "$login" \
        </dev/null >/dev/null 2>"$tmp/ssh-err-$name" || rc=$?
    if [ "$rc" -ne 0 ]; then
        ssh_failure "$name" "$rc" "$tmp/ssh-err-$name"
        return "$rc"
    fi
}

close_masters() {
    local name
    for name in "${names[@]}"; do
        if [ -S "$(mux "$name")" ]; then
            ssh -o "ControlPath=$(mux "$name")" -O exit "$name" >/dev/null 2>&1 || true
        fi
    done
}

# remote TIMEOUT_S HOST WORD...: runs WORD... (quoted for the remote shell) on HOST; stdout
# passes through; a failure is explained on stderr and returned.
remote() {
    local limit=$1 name=$2 rc=0 cmd
    shift 2
    ensure_master "$name" || return $?
    ssh_options "$name"
    cmd=$(printf '%q ' "$@")
    timeout -k 5 "$limit" ssh -n -o "ControlPath=$(mux "$name")" -o ControlMaster=no "${opts[@]}" \
        -p "$port" "$login" -- "$cmd" 2>"$tmp/ssh-err-$name" || rc=$?
    if [ "$rc" -ne 0 ]; then
        ssh_failure "$name" "$rc" "$tmp/ssh-err-$name"
        return "$rc"
    fi
}

# ctl TIMEOUT_S HOST ARGS...: node-ctl.sh ARGS on HOST.
ctl() {
    local limit=$1 name=$2
    shift 2
    remote "$limit" "$name" bash "$(remote_dir "$name")/node-ctl.sh" "$@"
}

# --- commands ---------------------------------------------------------------------------------

# The uname -m names of an ELF file's machine, from its header (e_machine at byte 18).
elf_arches() {
    local magic machine
    magic=$(od -An -tx1 -N4 "$1" | tr -d ' \n')
    [ "$magic" = 7f454c46 ] || return 0
    machine=$(od -An -tx1 -j18 -N2 "$1" | tr -d ' \n')
    case $machine in
        3e00) echo "x86_64 amd64" ;;
        b700) echo "aarch64 arm64" ;;
        2800) echo "armv7l armv6l armv8l arm" ;;
        0300) echo "i386 i486 i586 i686" ;;
        f300) echo "riscv64" ;;
        1500) echo "ppc64le ppc64" ;;
        1600) echo "s390x" ;;
        *) echo "elf-machine-0x$machine" ;;
    esac
}

binary_path() {
    local b=${cfg[binary]}
    if [ -n "$b" ]; then
        local_path "$b"
    elif [ -n "${CHORDKV_BIN:-}" ]; then
        echo "$CHORDKV_BIN"
    else
        echo "$here/../target/release/chordkv"
    fi
}

# The node.conf of host $1.
node_conf() {
    local name=$1 key
    local args=(node --listen "${h_listen[$name]}")
    [ -n "${h_advertise[$name]}" ] && args+=(--advertise "${h_advertise[$name]}")
    [ -n "${h_resp[$name]}" ] && args+=(--resp "${h_resp[$name]}")
    [ -n "${h_metrics[$name]}" ] && args+=(--metrics "${h_metrics[$name]}")
    args+=(--store "${h_store[$name]:-${cfg[store]}}")
    for key in replicas ack successors stabilize_ms store_threads routing cache vnodes; do
        [ -n "${cfg[$key]}" ] && args+=("${node_flag[$key]}" "${cfg[$key]}")
    done
    # The nodes listen where other hosts reach them, and loadgen and cluster.sh are clients
    # from other hosts: without a password, protected mode would refuse them.
    [ -z "${cfg[requirepass]}" ] && args+=(--protected-mode "${cfg[protected_mode]}")
    if [ -n "${cfg[node_args]}" ]; then
        local extra
        read -r -a extra <<<"${cfg[node_args]}"
        args+=("${extra[@]}")
    fi
    echo "# Written by deploy/cluster.sh push from $inventory; read by node-ctl.sh."
    printf 'name=%q\n' "$name"
    printf 'addr=%q\n' "$(addr_of "$name")"
    printf 'args=('
    printf '%q ' "${args[@]}"
    printf ')\n'
    printf 'start_timeout_s=%q\nstop_timeout_s=%q\n' "${cfg[start_timeout_s]}" "${cfg[stop_timeout_s]}"
    # node-ctl.sh adds --keyring DIR/keyring, and --requirepass with CHORDKV_PASSWORD for its
    # own probes, so neither the path nor the password is fixed here.
    printf 'keyring=%q\n' "$([ -n "${cfg[keyring]}" ] && echo yes || echo no)"
    printf 'password=%q\n' "${cfg[requirepass]}"
}

# push_keyring NAME: the inventory's keyring to NAME's directory, written with umask 077 (so
# mode 0600 from the first byte) and renamed into place, then SIGHUP to a running node.
push_keyring() {
    local name=$1 file dir rc=0
    file=$(local_path "${cfg[keyring]}")
    dir=$(remote_dir "$name")
    ensure_master "$name" || die "keyring to $name failed"
    ssh_options "$name"
    # shellcheck disable=SC2016 # expanded by the remote shell
    timeout -k 5 "$SSH_COMMAND_TIMEOUT_S" ssh -o "ControlPath=$(mux "$name")" -o ControlMaster=no "${opts[@]}" \
        -p "$port" "$login" -- "$(printf '%q ' sh -c 'umask 077 && mkdir -p -- "$1" && cat >"$1/keyring.new" && mv -f "$1/keyring.new" "$1/keyring"' sh "$dir")" \
        <"$file" 2>"$tmp/ssh-err-$name" || rc=$?
    if [ "$rc" -ne 0 ]; then
        ssh_failure "$name" "$rc" "$tmp/ssh-err-$name"
        die "keyring to $name failed"
    fi
    local out
    out=$(ctl "$SSH_COMMAND_TIMEOUT_S" "$name" reload) || die "reloading the keyring on $name failed"
    echo "$name: keyring copied to $(target_of "$name"):$dir/keyring ($out)"
}

cmd_keyring() {
    local name file
    [ -n "${cfg[keyring]}" ] || bad_input "the inventory sets no keyring=FILE"
    file=$(local_path "${cfg[keyring]}")
    [ -r "$file" ] || die "cannot read the keyring $file"
    for name in "$@"; do
        push_keyring "$name"
    done
}

cmd_push() {
    local binary arches name failed=0 rc
    local -A pid
    binary=$(binary_path)
    [ -f "$binary" ] || die "no chordkv binary at $binary: run \`cargo build --release --bin chordkv\` or set binary= in the inventory"
    arches=$(elf_arches "$binary")
    [ -n "$arches" ] || die "$binary is not an ELF executable"
    # Every host at once; each reports into its own files, printed in inventory order.
    for name in "$@"; do
        (push_host "$name" "$binary" "$arches" >"$tmp/push-out-$name" 2>&1) &
        pid[$name]=$!
    done
    for name in "$@"; do
        rc=0
        wait "${pid[$name]}" || rc=$?
        cat "$tmp/push-out-$name"
        if ! grep -q "^$name: pushed" "$tmp/push-out-$name"; then
            failed=1
            # A push that died of a signal (status > 128) leaves no message of its own.
            [ -s "$tmp/push-out-$name" ] || echo "cluster.sh: error: the push to $name ended with status $rc and no message" >&2
        fi
    done
    [ "$failed" -eq 0 ] || die "the push failed on some hosts (see above)"
}

# push_host NAME BINARY ARCHES: the push to one host; prints `NAME: pushed ...` on success.
push_host() {
    local name=$1 binary=$2 arches=$3 dir arch stage rc=0 key flags=()
    [ -n "${h_resp[$name]}" ] && flags+=(--resp)
    [ -n "${h_metrics[$name]}" ] && flags+=(--metrics)
    for key in "${optional_flags[@]}"; do
        [ -n "${cfg[$key]}" ] && flags+=("${node_flag[$key]}")
    done
    dir=$(remote_dir "$name")
    # shellcheck disable=SC2016 # expanded by the remote shell
    arch=$(remote "$SSH_COMMAND_TIMEOUT_S" "$name" sh -c 'uname -m && mkdir -p -- "$1"' sh "$dir") ||
        die "push to $name failed"
    if ! grep -qw -- "$arch" <<<"$arches"; then
        die "host $name is $arch but $binary is built for $(cut -d' ' -f1 <<<"$arches"): build for $arch (e.g. cargo build --release --target $arch-unknown-linux-gnu) and set binary= in the inventory"
    fi
    stage=$tmp/push-$name
    mkdir -p "$stage"
    ln -sf "$binary" "$stage/chordkv.new"
    cp "$node_ctl" "$stage/node-ctl.sh"
    node_conf "$name" >"$stage/node.conf"
    ssh_options "$name"
    timeout -k 5 "$SSH_COMMAND_TIMEOUT_S" scp -q -o "ControlPath=$(mux "$name")" -o ControlMaster=no \
        "${opts[@]}" -P "$port" \
        "$stage/chordkv.new" "$stage/node-ctl.sh" "$stage/node.conf" "$login:$dir/" 2>"$tmp/ssh-err-$name" || rc=$?
    if [ "$rc" -ne 0 ]; then
        ssh_failure "$name" "$rc" "$tmp/ssh-err-$name"
        die "push to $name failed"
    fi
    # A running node keeps its old binary (a rename does not touch the open file) until it
    # restarts.
    # shellcheck disable=SC2016 # expanded by the remote shell
    remote "$SSH_COMMAND_TIMEOUT_S" "$name" sh -c 'chmod +x "$1/chordkv.new" && mv -f "$1/chordkv.new" "$1/chordkv"' sh "$dir" ||
        die "push to $name failed"
    if [ ${#flags[@]} -gt 0 ]; then
        ctl "$SSH_COMMAND_TIMEOUT_S" "$name" check-flags "${flags[@]}" || die "push to $name failed"
    fi
    echo "$name: pushed $(basename "$binary") ($arch) and node.conf to $(target_of "$name"):$dir"
    if [ -n "${cfg[keyring]}" ]; then
        push_keyring "$name"
    fi
}

# Every host's address, the non-spare hosts first: the peers a starting node tries to join.
peers() {
    local name
    for name in "${names[@]}"; do
        [ "${h_spare[$name]}" = no ] && addr_of "$name"
    done
    for name in "${names[@]}"; do
        [ "${h_spare[$name]}" = yes ] && addr_of "$name"
    done
    return 0
}

start_limit() {
    echo $((cfg[start_timeout_s] + 2 * ${#names[@]} + 30))
}

start_host() {
    local name=$1 out
    mapfile -t peer_list < <(peers)
    out=$(ctl "$(start_limit)" "$name" start "${peer_list[@]}") || return 1
    echo "$name ($(addr_of "$name")): $out"
    # What query_states would now say.
    echo "${out%% (*}" >"$tmp/state-$name"
}

# Queries every host's state in parallel into $tmp/state-NAME: `running PID`, `paused PID`,
# `dead`, `not-pushed` (no node-ctl.sh there yet), `unreachable` (ssh failed) or `error`
# (node-ctl.sh failed; $tmp/state-err-NAME says why).
query_states() {
    local name
    for name in "$@"; do
        (
            local rc=0 ctl_path
            ctl_path=$(remote_dir "$name")/node-ctl.sh
            # shellcheck disable=SC2016 # expanded by the remote shell
            out=$(remote "$SSH_COMMAND_TIMEOUT_S" "$name" sh -c \
                'if [ -f "$1" ]; then exec bash "$1" state; else echo not-pushed; fi' sh "$ctl_path" \
                2>"$tmp/state-err-$name") || rc=$?
            if [ "$rc" -eq 0 ]; then
                echo "$out" >"$tmp/state-$name"
            elif [ "$rc" -eq 255 ] || [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
                echo unreachable >"$tmp/state-$name"
            else
                echo "error" >"$tmp/state-$name"
            fi
        ) &
    done
    wait
}

state_of() {
    cat "$tmp/state-$1"
}

# Walks the ring from the first running host and compares it with the hosts whose node
# runs (per the last query_states). Sets ring_verdict; status 0 if the ring is consistent
# and made of exactly those nodes. With vnodes a node has several ring positions
# (`IP:PORT#I`): they count as their node's address.
check_ring() {
    local name from="" json want got missing extra
    want=()
    for name in "${names[@]}"; do
        if [[ $(state_of "$name") == running* ]]; then
            want+=("$(addr_of "$name")")
            [ -z "$from" ] && from=$name
        fi
    done
    if [ -z "$from" ]; then
        ring_verdict="ring: no running node"
        return 1
    fi
    if ! json=$(ctl "$SSH_COMMAND_TIMEOUT_S" "$from" ring 2>"$tmp/ring-err"); then
        ring_verdict="ring: cannot walk it from $from: $(tail -n 1 "$tmp/ring-err")"
        return 1
    fi
    local positions count
    positions=$(grep -o '"addr":"[^"]*"' <<<"$json" | sed 's/"addr":"//; s/"$//')
    got=$(sed 's/#[0-9]*$//' <<<"$positions" | sort -u)
    missing=$(comm -23 <(printf '%s\n' "${want[@]}" | sort) <(echo "$got"))
    extra=$(comm -13 <(printf '%s\n' "${want[@]}" | sort) <(echo "$got"))
    count="$(grep -c . <<<"$got" || true) nodes"
    if [[ $positions == *'#'* ]]; then
        count+=" ($(grep -c . <<<"$positions" || true) ring positions)"
    fi
    if [[ $json == *'"consistent":true'* ]] && [ -z "$missing" ] && [ -z "$extra" ]; then
        ring_verdict="ring: consistent, $count, every running node in it (walked from $from)"
        return 0
    fi
    ring_verdict="ring: NOT consistent (walked from $from: $count"
    [ -n "$missing" ] && ring_verdict+="; missing $(tr '\n' ' ' <<<"$missing")"
    [ -n "$extra" ] && ring_verdict+="; unexpected $(tr '\n' ' ' <<<"$extra")"
    local problems
    problems=$(grep -o '"problems":\[[^]]*\]' <<<"$json" || true)
    [ -n "$problems" ] && [ "$problems" != '"problems":[]' ] && ring_verdict+="; $problems"
    ring_verdict+=")"
    return 1
}

# Waits (at most ring_timeout_s) until the ring is consistent and made of exactly the nodes
# that run (per query_states, which has run).
wait_ring() {
    local deadline=$((SECONDS + cfg[ring_timeout_s]))
    while :; do
        if check_ring; then
            echo "$ring_verdict"
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "$ring_verdict" >&2
            die "the ring did not become consistent within ${cfg[ring_timeout_s]} s"
        fi
        sleep "$RING_POLL_S"
    done
}

cmd_up() {
    local name failed=0
    query_states "${names[@]}"
    for name in "${names[@]}"; do
        [ "${h_spare[$name]}" = yes ] && continue
        if [[ $(state_of "$name") =~ ^(running|paused) ]]; then
            echo "$name ($(addr_of "$name")): $(state_of "$name") (already running: left alone)"
            continue
        fi
        start_host "$name" || failed=1
    done
    [ "$failed" -eq 0 ] || die "some nodes did not start (see above)"
    wait_ring
}

# cmd_status WAIT_S HOST...: with WAIT_S > 0, first waits (at most that long) until the ring is
# consistent and holds exactly the running nodes: a ring settles a few stabilize periods after
# a node joins, leaves or dies.
cmd_status() {
    local wait_s=$1 name st healthy=0 deadline
    shift
    deadline=$((SECONDS + wait_s))
    query_states "${names[@]}"
    while [ "$wait_s" -gt 0 ] && ! check_ring && [ "$SECONDS" -lt "$deadline" ]; do
        sleep "$RING_POLL_S"
        query_states "${names[@]}"
    done
    for name in "$@"; do
        st=$(state_of "$name")
        if [ "$st" = unreachable ] || [ "$st" = error ]; then
            printf '%-12s %-22s %s: %s\n' "$name" "$(addr_of "$name")" "$st" \
                "$(tail -n 1 "$tmp/state-err-$name" | sed 's/^cluster.sh: error: //')"
        else
            printf '%-12s %-22s %s%s\n' "$name" "$(addr_of "$name")" "$st" \
                "$([ "${h_spare[$name]}" = yes ] && echo ' (spare)')"
        fi
        if [[ $st != running* ]] && [ "${h_spare[$name]}" = no ]; then
            healthy=1
        fi
    done
    check_ring || healthy=1
    echo "$ring_verdict"
    return "$healthy"
}

cmd_state() {
    local name role
    query_states "${names[@]}"
    for name in "${names[@]}"; do
        role=node
        [ "${h_spare[$name]}" = yes ] && role=spare
        echo "$name $(addr_of "$name") $role $(state_of "$name")"
    done
}

cmd_down() {
    local name out failed=0
    for name in "${names[@]}"; do
        if out=$(ctl "$((cfg[stop_timeout_s] + 30))" "$name" stop); then
            echo "$name: $out"
        else
            failed=1
        fi
    done
    [ "$failed" -eq 0 ] || die "some hosts could not be stopped (see above)"
}

one_host_cmd() {
    local cmd=$1 name=$2 out
    shift 2
    case $cmd in
        start) start_host "$name" ;;
        stop)
            out=$(ctl "$((cfg[stop_timeout_s] + 30))" "$name" stop) || return 1
            echo "$name: $out"
            ;;
        restart)
            out=$(ctl "$((cfg[stop_timeout_s] + 30))" "$name" stop) || return 1
            [ "$out" = not-running ] || echo "$name: $out"
            start_host "$name" || return 1
            query_states "${names[@]}"
            wait_ring
            ;;
        kill | pause | resume)
            out=$(ctl "$SSH_COMMAND_TIMEOUT_S" "$name" "$cmd") || return 1
            echo "$name: $out"
            ;;
        logs) ctl "$SSH_COMMAND_TIMEOUT_S" "$name" logs "${1:-100}" ;;
    esac
}

# --- main -------------------------------------------------------------------------------------

[ $# -ge 2 ] || usage
inventory=$1
command=$2
shift 2
inventory_dir=$(cd "$(dirname "$inventory")" 2>/dev/null && pwd) || bad_input "no directory for $inventory"
for tool in ssh scp timeout od; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
parse_inventory "$inventory"
tmp=$(mktemp -d)
if [ -n "$mux_dir" ]; then
    mkdir -p "$mux_dir"
    trap 'rm -rf "$tmp"' EXIT
else
    trap 'close_masters; rm -rf "$tmp"' EXIT
fi

case $command in
    push | status | keyring)
        wait_s=0
        if [ "$command" = status ] && [ "${1:-}" = --wait ]; then
            [[ ${2:-} =~ ^[0-9]+$ ]] || { echo "cluster.sh: --wait needs SECONDS" >&2; usage; }
            wait_s=$2
            shift 2
        fi
        if [ $# -ge 1 ]; then
            check_host "$1"
            hosts=("$1")
        else
            hosts=("${names[@]}")
        fi
        case $command in
            status) cmd_status "$wait_s" "${hosts[@]}" ;;
            push) cmd_push "${hosts[@]}" ;;
            keyring) cmd_keyring "${hosts[@]}" ;;
        esac
        ;;
    up | down | state)
        [ $# -eq 0 ] || usage
        "cmd_$command"
        ;;
    disconnect)
        [ $# -eq 0 ] || usage
        close_masters
        ;;
    start | stop | restart | kill | pause | resume | logs)
        [ $# -ge 1 ] || { echo "cluster.sh: $command needs a HOST" >&2; usage; }
        check_host "$1"
        one_host_cmd "$command" "$@" || exit 1
        ;;
    help | -h | --help) usage ;;
    *)
        echo "cluster.sh: unknown command '$command'" >&2
        usage
        ;;
esac
