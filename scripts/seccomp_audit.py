#!/usr/bin/env python3
"""seccomp_audit.py - runs integration tests under strace -f and lists the system calls keel made.

Usage: scripts/seccomp_audit.py [--build build] test_pipeline_kafka test_tls ...
Prints every system call the keel processes (and all their threads) made, marks those missing
from the allowlist in src/core/sandbox.c, and exits 1 if any is missing. Calls keel makes only
before the sandbox starts (execve, bind, listen, setuid, ...) show up too: judge those by hand.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()")
RET = re.compile(r"=\s+(\d+)(?:\s|$)")


def allowlist():
    src = open(os.path.join(ROOT, "src/core/sandbox.c"), encoding="utf-8").read()
    table = src.split("static const char *const allowed[] = {", 1)[1].split("};", 1)[0]
    extra = {"clone", "prctl", "clone3", "socket"}  # rules with arguments or an errno, below the table
    return set(re.findall(r'"(\w+)"', table)) | extra


def keel_calls(trace, binary):
    pids, calls, execs = set(), {}, {}
    path = 'execve("%s"' % binary
    with open(trace, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            pid, name = int(m.group(1)), m.group(2) or m.group(3)
            if name == "execve" and "unfinished" in line:
                execs[pid] = path in line  # the path is on this half, the result on the other
            elif name == "execve" and line.rstrip().endswith("= 0"):
                if path in line or execs.pop(pid, False):
                    pids.add(pid)
                else:
                    pids.discard(pid)
            if pid not in pids:
                continue
            calls[name] = calls.get(name, 0) + 1
            if name in ("clone", "clone3", "fork", "vfork") and "unfinished" not in line:
                r = RET.search(line.rsplit(")", 1)[-1])
                if r:
                    pids.add(int(r.group(1)))
    return calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("tests", nargs="+")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    binary = os.path.join(build, "keel")
    env = dict(os.environ, KEEL_BIN=binary, KEEL_TOOLS=os.path.join(build, "tools"),
               KEEL_HELLO=os.path.join(build, "examples/hello"),
               KEEL_LIB=os.path.join(build, "libkeel.so"))
    total = {}
    with tempfile.TemporaryDirectory() as tmp:
        for t in a.tests:
            out = os.path.join(tmp, t + ".strace")
            path = os.path.join(ROOT, "tests/integration", t if t.endswith(".py") else t + ".py")
            rc = subprocess.call(["strace", "-f", "-qq", "-s", "256", "-o", out, sys.executable, path], env=env,
                                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            calls = keel_calls(out, binary)
            print(f"{t}: exit {rc}, {len(calls)} distinct calls", file=sys.stderr)
            for k, v in calls.items():
                total[k] = total.get(k, 0) + v
    allowed = allowlist()
    missing = sorted(k for k in total if k not in allowed)
    for k in sorted(total):
        print(f"{k:24} {total[k]:8} {'' if k in allowed else 'NOT ALLOWED'}")
    print("missing: " + (" ".join(missing) or "none"))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
