#!/bin/sh
# checksrc.sh - fails on banned C functions and files without a one-line purpose comment (curl's checksrc idea).
set -eu
cd "$(dirname "$0")/.."
status=0
files=$(find src include examples tests bench -name '*.[ch]' | sort)
# shellcheck disable=SC2086
if grep -nE '\b(strcpy|strcat|sprintf|vsprintf|strtok|atoi|atol|gets)[[:space:]]*\(' $files; then
  echo "checksrc: banned function (use memcpy/snprintf/strtoull with checks)" >&2
  status=1
fi
for f in $files; do
  head -1 "$f" | grep -q '^/\* [A-Za-z0-9_./-]* - ' || { echo "checksrc: $f: first line must be '/* name - purpose */'" >&2; status=1; }
done
exit $status
