#!/bin/sh
# lint.sh - clang-tidy (.clang-tidy) and cppcheck over keel's sources from CMake's compile database; fails on any finding.
# usage: scripts/lint.sh [BUILD_DIR]   (default build; configure it first: `make build` or `make lint`)
# Covered: src/ (and through it include/), examples/, tests/tools/. Not covered: tests/unit (cmocka
# macros, and they #include the .c files under test), tests/fuzz (clang + libFuzzer only), bench/.
set -eu
cd "$(dirname "$0")/.."
build=${1:-build}
jobs=${LINT_JOBS:-$(nproc)}
db="$build/compile_commands.json"
[ -f "$db" ] || { echo "lint: $db missing: configure first (cmake -S . -B $build -G Ninja)" >&2; exit 2; }
tidy=$(command -v run-clang-tidy-14 || command -v run-clang-tidy || true)
[ -n "$tidy" ] || { echo "lint: run-clang-tidy not found (apt-get install clang-tidy)" >&2; exit 2; }
command -v cppcheck > /dev/null || { echo "lint: cppcheck not found (apt-get install cppcheck)" >&2; exit 2; }

# The database restricted to the linted directories (both tools lint every entry they are given).
mkdir -p "$build/lint"
python3 - "$db" "$build/lint/compile_commands.json" "$PWD" << 'EOF'
import json, os, sys
src, dst, root = sys.argv[1:]
dirs = ("src/", "examples/", "tests/tools/")
keep = [e for e in json.load(open(src))
        if os.path.relpath(os.path.join(e["directory"], e["file"]), root).startswith(dirs)]
json.dump(keep, open(dst, "w"), indent=1)
print("lint: %d translation units" % len(keep))
EOF

status=0
start=$(date +%s)
# .clang-tidy sets WarningsAsErrors, so any finding makes clang-tidy, and run-clang-tidy, fail.
if ! "$tidy" -p "$build/lint" -j "$jobs" -quiet > "$build/lint/clang-tidy.log" 2>&1; then
  sed 's/\x1b\[[0-9;]*m//g' "$build/lint/clang-tidy.log" | grep -E '(warning|error): ' | sort -u >&2 ||
    cat "$build/lint/clang-tidy.log" >&2
  echo "lint: clang-tidy: findings above (full log: $build/lint/clang-tidy.log)" >&2
  status=1
fi
mid=$(date +%s)
echo "lint: clang-tidy $((mid - start)) s"
# varFuncNullUB: keel_log and friends end their key/value lists with NULL, which glibc defines as
# ((void *)0), a pointer, on every target keel builds for; (char *)NULL at ~40 call sites buys nothing.
# Inline `cppcheck-suppress` comments mark the few false positives, each with its reason.
cppcheck --project="$build/lint/compile_commands.json" --enable=warning,performance,portability \
  --inline-suppr --error-exitcode=1 --quiet -j "$jobs" --suppress=missingIncludeSystem \
  --suppress=varFuncNullUB --template='{file}:{line}:{column}: {severity}: {message} [{id}]' ||
  { echo "lint: cppcheck: findings above" >&2; status=1; }
echo "lint: cppcheck $(($(date +%s) - mid)) s"
[ $status -eq 0 ] && echo "lint: no findings"
exit $status
