#!/bin/sh
# test-arm.sh - runs an aarch64 build's unit tests under qemu-user, then keel itself: version, serve + GET / and POST /echo.
# Usage: scripts/test-arm.sh [BUILD_DIR] (default build-arm, configured with cmake/aarch64-linux-gnu.cmake).
# KEEL_ARM_INTEGRATION=1 also runs the integration tests against the emulated binaries (see below).
set -eu
cd "$(dirname "$0")/.."
BUILD=${1:-build-arm}
case "$BUILD" in /*) ;; *) BUILD="$PWD/$BUILD" ;; esac
# As CMAKE_CROSSCOMPILING_EMULATOR in the toolchain file (why -L / and pauth-impdef: see there).
QEMU="qemu-aarch64 -cpu max,pauth-impdef=on -L /"

file -b "$BUILD/keel" | grep -q 'ARM aarch64' || { echo "test-arm: $BUILD/keel is not an aarch64 ELF" >&2; exit 1; }
echo "test-arm: $(file -b "$BUILD/keel" | cut -d, -f1-2)"

# Unit tests: ctest runs them through CMAKE_CROSSCOMPILING_EMULATOR.
(cd "$BUILD" && ctest -R '^unit/' --output-on-failure -j 2)

# The binary: wrappers that run each aarch64 program through qemu, for the Python harness.
W="$BUILD/qemu"
mkdir -p "$W/tools" "$W/examples"
for b in keel tools/kafka_mock examples/hello; do
  printf '#!/bin/sh\nexec %s %s "$@"\n' "$QEMU" "$BUILD/$b" > "$W/$b"
  chmod +x "$W/$b"
done
"$W/keel" version | grep -q '^keel ' || { echo "test-arm: keel version failed" >&2; exit 1; }
"$W/keel" version
# serve on an ephemeral port; GET / and POST /echo over a real socket (tests/integration/test_smoke.py).
KEEL_BIN="$W/keel" python3 tests/integration/test_smoke.py

# Bonus (about 5 minutes): the integration tests against the emulated binaries. Left out: the ones
# that compile a C program against libkeel and run it on the host (test_symbols, test_trace_export,
# test_tracing's test_public_api_for_outgoing_calls), which would need binfmt_misc.
if [ "${KEEL_ARM_INTEGRATION:-0}" = 1 ]; then
  failed=""
  for t in tests/integration/test_*.py; do
    name=$(basename "$t" .py)
    case "$name" in test_symbols | test_trace_export) echo "skip $name (host-built C drivers)"; continue ;; esac
    only=""
    if [ "$name" = test_tracing ]; then
      only=$(grep -o '^def test_[a-z0-9_]*' "$t" | cut -c5- | grep -vx test_public_api_for_outgoing_calls)
    fi
    # shellcheck disable=SC2086
    if KEEL_BIN="$W/keel" KEEL_TOOLS="$W/tools" KEEL_HELLO="$W/examples/hello" \
      python3 "$t" $only > "$BUILD/$name.log" 2>&1; then
      echo "ok   $name ($(tail -1 "$BUILD/$name.log"))"
    else
      echo "FAIL $name (log: $BUILD/$name.log)"
      failed="$failed $name"
    fi
  done
  [ -z "$failed" ] || { echo "test-arm: integration under qemu failed:$failed" >&2; exit 1; }
fi
echo "test-arm: ok"
