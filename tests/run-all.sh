#!/usr/bin/env bash
# Runs every chordkv test: unit tests, deterministic simulations, and the real-process tests
# of the shipped `chordkv` binary on loopback. Installs what the tests need first, so it passes
# on a fresh Debian machine with Rust installed.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Redis store's tests run a real redis-server, and the RESP tests run redis-cli (Debian's
# redis-server and redis-tools).
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "run-all.sh: redis-server or redis-cli not found; installing them with apt-get" >&2
    as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "run-all.sh: cannot install redis-server: not root and no sudo; install it and retry" >&2
            exit 1
        fi
        as_root=(sudo)
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "run-all.sh: cannot install redis-server: no apt-get; install it and retry" >&2
        exit 1
    fi
    ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -q
    ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server redis-tools
    command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || {
        echo "run-all.sh: redis-server or redis-cli is still not on PATH after installing them" >&2
        exit 1
    }
fi

# The TLS test (tests/tests/tls.rs) runs redis-py with ssl=True: Debian's python3-redis, for
# Debian's /usr/bin/python3 (which the test runs, whatever else is first on PATH).
if ! /usr/bin/python3 -c 'import redis' >/dev/null 2>&1; then
    echo "run-all.sh: the Python redis client not found; installing python3-redis with apt-get" >&2
    as_root=()
    [ "$(id -u)" -ne 0 ] && as_root=(sudo)
    ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -q
    ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-redis
fi

# The deployment test (tests/tests/deploy.rs) runs real sshd hosts: Debian's openssh-server.
# It needs root (network namespaces) and skips itself without, so only root installs it.
if [ ! -x /usr/sbin/sshd ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run-all.sh: sshd not found; installing openssh-server with apt-get" >&2
        env DEBIAN_FRONTEND=noninteractive apt-get update -q
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server
    else
        echo "run-all.sh: sshd not found and not root: the deployment test will skip itself" >&2
    fi
fi

# Partitions (tests/tests/partition.rs, loadgen/tests/partition.rs, workloads/partition.yaml)
# run every node in its own network namespace with `ip` (Debian's iproute2). They need root
# and skip themselves without, so only root installs it.
if ! command -v ip >/dev/null 2>&1 && [ ! -x /usr/sbin/ip ] && [ ! -x /sbin/ip ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run-all.sh: ip not found; installing iproute2 with apt-get" >&2
        env DEBIAN_FRONTEND=noninteractive apt-get update -q
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2
    else
        echo "run-all.sh: ip not found and not root: the partition tests will skip themselves" >&2
    fi
fi

# The process tests spawn target/debug/chordkv, which `cargo test` does not build for another
# package's tests: build every binary first.
# Today's Redis clients with their default settings (redis-py 8 and node-redis 6 speak RESP3),
# for tests/tests/resp_clients.rs: installed into target/clients, never system-wide.
clients=target/clients
if ! PYTHONPATH="$clients/python" python3 -c 'import redis, sys; sys.exit(int(redis.__version__.split(".")[0]) < 8)' >/dev/null 2>&1; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "run-all.sh: pip not found; installing python3-pip with apt-get" >&2
        as_root=()
        [ "$(id -u)" -ne 0 ] && as_root=(sudo)
        ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -q
        ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pip
    fi
    echo "run-all.sh: installing redis-py 8 into $clients/python" >&2
    # --target keeps it out of the system's packages; Debian's pip wants the flag even so.
    python3 -m pip install -q --target "$clients/python" 'redis>=8,<9' \
        || python3 -m pip install -q --break-system-packages --target "$clients/python" 'redis>=8,<9'
fi
if [ ! -f "$clients/node/node_modules/redis/package.json" ] || [ ! -f "$clients/node/node_modules/ioredis/package.json" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "run-all.sh: npm not found; installing nodejs and npm with apt-get" >&2
        as_root=()
        [ "$(id -u)" -ne 0 ] && as_root=(sudo)
        ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -q
        ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
    fi
    echo "run-all.sh: installing node-redis 6 and ioredis 6 into $clients/node" >&2
    mkdir -p "$clients/node"
    npm install --silent --no-audit --no-fund --prefix "$clients/node" redis@6 ioredis@6
fi

cargo build --workspace --bins
cargo test --workspace
