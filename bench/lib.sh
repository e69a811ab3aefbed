# Shared by the bench scripts that compare settings with interleaved loadgen runs and report
# medians (hotkey-reads.sh, keyring-cost.sh; they set DURATION first), and by those that start
# processes of their own (large-values.sh, memory.sh, tls-cost.sh). Sourced from the
# repository root:
#
#   need_redis                                   # redis-server and redis-cli, installed if missing
#   bench_processes                              # release chordkv as $bin; $work; kills $pids on exit
#
#   source bench/lib.sh
#   bench_setup                                  # release build; $work, removed on exit
#   run_loadgen FILE OUT WHAT                    # one run, measured for DURATION s
#   line=$(summary_of OUT ops_per_s p99_us ...)  # one line of the run's numbers
#   ops=$(printf '%s' "$rows" | column_median 1) # a table cell from the runs' lines

# Installs redis-server and redis-tools from Debian's packages when either is missing.
need_redis() {
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server redis-tools >/dev/null
    fi
}

# Builds the release `chordkv` ($bin) and makes the scratch directory $work; on exit, kills
# every process whose pid the script added to $pids and removes $work.
bench_processes() {
    cargo build --release --bin chordkv -q
    bin=target/release/chordkv
    work=$(mktemp -d)
    pids=()
    trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
}

# Builds the release binaries and makes the scratch directory $work, removed on exit.
bench_setup() {
    cargo build --release --bins -q
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
}

# run_loadgen FILE OUT WHAT: loadgen on the workload FILE for DURATION s, its output in OUT;
# when it fails, the end of its stderr and an exit (WHAT names the run).
run_loadgen() {
    local file=$1 out=$2 what=$3
    target/release/loadgen --workload "$file" --duration "$DURATION" --out "$out" --quiet >/dev/null 2>"$out.err" || {
        echo "loadgen failed ($what):" >&2
        tail -5 "$out.err" >&2
        exit 1
    }
}

# summary_of OUT FIELD...: the FIELDs of OUT/summary.json on one line, separated by spaces.
# Fields: ops_per_s (throughput, rounded), p50_us and p99_us (all operations), get_p99_us
# (GETs, else all operations), errors, and from the checker lost, stale_reads, reads_checked
# (0 when the run did not check).
summary_of() {
    python3 - "$1/summary.json" "${@:2}" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
a = s["ops"]["all"]
g = s["ops"].get("get", a)
v = s.get("verify", {})
fields = {
    "ops_per_s": lambda: round(s["throughput_ops"]),
    "p50_us": lambda: a["p50_us"],
    "p99_us": lambda: a["p99_us"],
    "get_p99_us": lambda: g["p99_us"],
    "errors": lambda: a["errors"],
    "lost": lambda: v.get("lost", 0),
    "stale_reads": lambda: v.get("stale_reads", 0),
    "reads_checked": lambda: v.get("reads_checked", v.get("reads", 0)),
}
print(*(fields[f]() for f in sys.argv[2:]))
PY
}

# The median of the numbers on stdin, one a line (the mean of the middle two for an even count).
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# column_median K, column_sum K: the median or the sum of column K of the lines on stdin.
column_median() { awk -v k="$1" '{print $k}' | median; }
column_sum() { awk -v k="$1" '{s+=$k} END {print s}'; }

# The commit the numbers were measured at; `+changes` when a tracked file outside results/
# differs from it (a report the script itself is overwriting is no change of the code).
revision() { echo "$(git rev-parse --short HEAD)$(git diff --quiet -- . ':(exclude)results' || echo '+changes')"; }
