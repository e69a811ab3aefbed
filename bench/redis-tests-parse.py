"""Reads the output of Redis' test suite (`./runtest`) for bench/redis-tests.sh.

  redis-tests-parse.py stopped LOG
      The test that stopped the run in LOG (an `[exception]`), as `name<TAB>reason`, or
      nothing when the run completed.
  redis-tests-parse.py report DIR COMMAND REV VERSION NODES UNIT...
      The Markdown report of the units' last runs in DIR (UNIT.log, UNIT.notrun).
"""
import re
import sys
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*m")
RESULT = re.compile(r"^\[(ok|err|skip|ignore|exception)\]: (.*)$")
# Where a stopped run's traceback names the test it was in: `"test {name} {` or `"test "name" {`.
IN_TEST = re.compile(r'^"test (?:\{(.+?)\}|"(.+?)") \{')


def lines(path):
    return [ANSI.sub("", line.rstrip("\n")) for line in Path(path).read_text(errors="replace").splitlines()]


def reason_of(text):
    """A short reason: the error, with the suite's wrapping removed."""
    text = text.strip().rstrip(".")
    text = re.sub(r"^Executing test client: ", "", text)
    return text[:200]


def stopped(path):
    ls = lines(path)
    for i, line in enumerate(ls):
        m = RESULT.match(line)
        if not m or m.group(1) != "exception":
            continue
        reason = reason_of(m.group(2))
        for later in ls[i:]:
            t = IN_TEST.match(later.strip())
            if t:
                return f"{t.group(1) or t.group(2)}\t{reason}"
        return f"(outside any test)\t{reason}"
    return ""


def results(path):
    """(ok, failed [(name, reason)], skipped [name]) of a completed run."""
    ok, failed, skipped = [], [], []
    ls = lines(path)
    for i, line in enumerate(ls):
        m = RESULT.match(line)
        if not m:
            continue
        kind, rest = m.groups()
        if kind == "ok":
            ok.append(re.sub(r" \(\d+ ms\)$", "", rest))
        elif kind == "err":
            name = re.sub(r" in tests/.*$", "", rest)
            detail = ls[i + 1] if i + 1 < len(ls) else ""
            failed.append((name, reason_of(detail)))
        elif kind in ("skip", "ignore"):
            skipped.append(rest)
    return ok, failed, skipped


def report(directory, command, rev, version, nodes, units):
    out = []
    out.append("# Redis' own test units against chordkv\n")
    out.append(f"Produced by `{command}` (chordkv {rev}; test sources: Debian's redis {version} "
               f"source package; chordkv cluster --nodes {nodes} --resp, memory store).\n")
    out.append("A test *not run* stopped the suite (an error the test did not expect, such as "
               "an unknown command): the unit was run again without it. Its reason is the "
               "error it stopped at.\n")
    out.append("| unit | passed | failed | not run | of | skipped by the suite |")
    out.append("|---|---:|---:|---:|---:|---:|")
    details = []
    for unit in units:
        base = Path(directory) / unit.replace("/", "_")
        ok, failed, skipped = results(f"{base}.log")
        notrun = [l.split("\t", 1) for l in Path(f"{base}.notrun").read_text().splitlines() if l]
        ours = {name for name, _ in notrun}
        skipped = [s for s in skipped if s not in ours]
        total = len(ok) + len(failed) + len(notrun)
        out.append(f"| {unit} | {len(ok)} | {len(failed)} | {len(notrun)} | {total} | {len(skipped)} |")
        details.append(f"\n## {unit}\n")
        if failed:
            details.append("Failed:\n")
            details += [f"- {name}: {reason}" for name, reason in failed]
            details.append("")
        if notrun:
            details.append("Not run:\n")
            details += [f"- {name}: {reason}" for name, reason in notrun]
            details.append("")
        if skipped:
            details.append("Skipped by the suite (tags or options of external-server mode):\n")
            details += [f"- {name}" for name in skipped]
            details.append("")
    return "\n".join(out + details) + "\n"


def main():
    if sys.argv[1] == "stopped":
        print(stopped(sys.argv[2]))
    elif sys.argv[1] == "report":
        directory, command, rev, version, nodes = sys.argv[2:7]
        sys.stdout.write(report(directory, command, rev, version, nodes, sys.argv[7:]))
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")


if __name__ == "__main__":
    main()
