#!/bin/sh
# fuzz.sh - runs every fuzz_* libFuzzer binary for a bounded time on a scratch copy of its corpus; fails on any crash.
set -eu

usage() {
  echo "usage: $0 BUILD_FUZZ_DIR SECONDS" >&2
  exit 2
}
[ $# -eq 2 ] || usage
case $2 in '' | *[!0-9]*) usage ;; esac
[ -d "$1" ] || { echo "fuzz: $1: not a directory" >&2; exit 2; }

dir=$(cd "$1" && pwd)
secs=$2
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/keel-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Crash inputs outlive the run, next to the binaries (never in the source tree).
artifacts="$dir/artifacts"

status=0
count=0
for bin in "$dir"/fuzz_*; do
  if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then continue; fi
  name=$(basename "$bin")
  short=${name#fuzz_}
  count=$((count + 1))

  # The committed corpus is only read: libFuzzer adds what it finds to the copy.
  corpus="$work/corpus-$short"
  mkdir -p "$corpus"
  if [ -d "$root/tests/fuzz/corpus/$short" ]; then
    cp -R "$root/tests/fuzz/corpus/$short/." "$corpus/"
  fi
  set -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
  if [ -f "$root/tests/fuzz/$short.dict" ]; then
    set -- "$@" -dict="$root/tests/fuzz/$short.dict"
  elif [ -f "$root/tests/fuzz/$name.dict" ]; then
    set -- "$@" -dict="$root/tests/fuzz/$name.dict"
  fi
  mkdir -p "$artifacts"
  set -- "$@" -artifact_prefix="$artifacts/$short-"

  log="$work/$short.log"
  rc=0
  "$bin" "$@" "$corpus" >"$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
  cov=$(sed -n 's/^#[0-9]*[[:space:]]*DONE[[:space:]]*cov: \([0-9]*\).*/\1/p' "$log" | tail -n 1)
  files=$(find "$corpus" -type f | wc -l | tr -d ' ')
  if [ "$rc" -eq 0 ]; then
    echo "fuzz: $name: ok (${runs:-?} runs in ${secs}s, cov ${cov:-?}, corpus $files files)"
  else
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    echo "fuzz: $name: FAILED (exit $rc)${crash:+, input saved as $crash}"
    grep -E 'ERROR|SUMMARY|check failed|runtime error' "$log" | head -n 5 | sed 's/^/    /' >&2 || true
    status=1
  fi
done

if [ "$count" -eq 0 ]; then
  echo "fuzz: no fuzz_* binaries in $dir (configure with -DKEEL_FUZZ=ON)" >&2
  exit 1
fi
exit $status
